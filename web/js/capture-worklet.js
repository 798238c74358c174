// The microphone's samples, from the audio thread to the page (web/js/audio.js records them): mono (the
// channels averaged), in batches of about 2048 frames, transferred. 'stop' hands over what is left and ends.

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(2048);
    this.n = 0;
    this.running = true;
    this.port.onmessage = ({ data }) => {
      if (data === 'stop') {
        this.flush();
        this.running = false;
      }
    };
  }

  flush() {
    if (!this.n) return;
    const out = this.buf.slice(0, this.n);
    this.port.postMessage(out, [out.buffer]);
    this.n = 0;
  }

  process(inputs) {
    if (!this.running) return false;
    const chans = inputs[0];
    if (chans && chans.length) {
      const len = chans[0].length;
      if (this.n + len > this.buf.length) this.flush();
      for (let i = 0; i < len; i++) {
        let v = 0;
        for (const c of chans) v += c[i];
        this.buf[this.n + i] = v / chans.length;
      }
      this.n += len;
      if (this.n >= this.buf.length) this.flush();
    }
    return true;
  }
}

registerProcessor('rullama-capture', Capture);
