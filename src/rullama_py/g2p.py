"""Text to phonemes for Kokoro-82M: kokoro-js's G2P (text normalisation, espeak-ng, Kokoro's post-processing)
ported to Python, with espeak-ng natively (Debian's libespeak-ng) and in the browser (npm phonemizer).

    ps = await phonemize("Dr. Smith paid $5.50.", "en-us")   # 'dˈɑːktɚ smˈɪθ pˈeɪd fˈaɪv dˈɑːlɚz ænd ...'
    async for text, ps in iter_sentences(long_text, lang_for_voice("af_heart")):
        ids = tokenize(ps, vocab)                              # the model adds the 0 pad on both sides

English follows kokoro-js 1.2.1 (`phonemize` in its dist/kokoro.js) exactly: the same regular expressions in
the same order, the same split around punctuation, the same post-processing. Its output is the oracle
(tests/fixtures/g2p/kokoro_js_phonemes.json, made by tools/make_g2p_goldens.mjs). What remains different is
espeak-ng itself: natively Debian 12's 1.51, in the browser npm phonemizer 1.2.1's development snapshot between
1.51 and 1.52 (it has 1.52's Tigrinya and Totontepec Mixe voices but not its Faroese; its en_dict differs from
1.51's). Where they read a word differently the two sides differ; tests/test_g2p.py lists those words.

Languages (Kokoro's voice prefixes, `lang_for_voice`): a = "en-us", b = "en-gb", natively and in the browser;
e = "es", f = "fr-fr", h = "hi", i = "it", p = "pt-br" natively only (npm phonemizer ships English only). These
five follow Kokoro's own Python pipeline (misaki's EspeakG2P: espeak-ng with tied multi-letter phonemes mapped
to Kokoro's single symbols) after kokoro-js's language-neutral normalisation; kokoro-js has no such path.
j = "ja" and z = "cmn" are not supported: Kokoro's Japanese and Chinese voices were trained on misaki's own
G2P (pyopenjtalk, pypinyin), not espeak's phonemes.

Streaming (`iter_sentences`, `split_sentences`): kokoro-js's sentence splitter (its TextSplitterStream), then
every sentence over `max_phonemes` (510: Kokoro's 512 positions minus the two pads) cut at clause punctuation,
then between words, then inside a word; nothing is dropped: a piece with nothing to say (a lone "***") is
joined to its neighbour.
"""

from __future__ import annotations

import re
from typing import AsyncIterator

from . import _backend

__all__ = [
    "G2PError",
    "LANGUAGES",
    "MAX_PHONEMES",
    "iter_sentences",
    "lang_for_voice",
    "normalize_text",
    "phonemize",
    "sentence_texts",
    "split_sentences",
    "supported_languages",
    "tokenize",
]


class G2PError(ValueError):
    """Text that cannot become phonemes, said in a sentence for the user."""


# Kokoro's voice prefix -> language code (the first letter of "af_heart", "bm_george", ...).
LANGUAGES = {"a": "en-us", "b": "en-gb", "e": "es", "f": "fr-fr", "h": "hi", "i": "it", "p": "pt-br",
             "j": "ja", "z": "cmn"}
# Language -> the espeak-ng voice used. kokoro-js asks for "en" for its British voices (espeak's "en" is
# English (Great Britain), the same voice file as "en-gb").
ESPEAK_VOICES = {"en-us": "en-us", "en-gb": "en", "es": "es", "fr-fr": "fr-fr", "hi": "hi", "it": "it",
                 "pt-br": "pt-br"}
ENGLISH = ("en-us", "en-gb")
BROWSER_LANGUAGES = ENGLISH  # npm phonemizer 1.2.1 carries English data only
MAX_PHONEMES = 510  # Kokoro reads at most 512 token positions, two of them the 0 pads

# JavaScript's \s (ECMAScript WhiteSpace and LineTerminator). Python's \s and str.strip() use another set
# (they add U+001C..U+001F and U+0085, and leave out U+FEFF), so the ported expressions spell JS's out.
_JS_SPACE_CHARS = ("\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                   "\u2028\u2029\u202f\u205f\u3000\ufeff")
_JS_SPACE = "[" + re.escape(_JS_SPACE_CHARS) + "]"
# The marks kokoro-js keeps as they are and does not send to espeak; the text between them goes to espeak
# stretch by stretch (a run of marks with the spaces around it stays in the output verbatim).
_PUNCTUATION = ';:,.!?¡¿—…"«»“”(){}[]'
_PUNCTUATION_RUN = re.compile(f"(?:{_JS_SPACE}*[{re.escape(_PUNCTUATION)}]+{_JS_SPACE}*)+")

# kokoro-js compiles its expressions without the `u` flag: \b, \w and \d are ASCII there, hence re.ASCII.
_A = re.ASCII
_AI = re.ASCII | re.IGNORECASE


def lang_for_voice(voice_name: str) -> str:
    """The language of a Kokoro voice from its prefix letter: "af_heart" -> "en-us", "bf_emma" -> "en-gb",
    "ef_dora" -> "es", "ff_siwis" -> "fr-fr", "hf_alpha" -> "hi", "if_sara" -> "it", "pf_dora" -> "pt-br",
    "jf_alpha" -> "ja", "zf_xiaobei" -> "cmn". espeak-ng here reads en-us and en-gb everywhere, es, fr-fr, hi, it
    and pt-br natively only; ja and cmn not at all (see the module docstring). Raises G2PError for a name
    not of that form (language letter, f or m, "_", name)."""
    m = re.match(r"([a-z])[fm]_", (voice_name or "").strip().lower())
    lang = LANGUAGES.get(m.group(1)) if m else None
    if lang is None:
        raise G2PError(f"The voice {voice_name!r} is not a Kokoro voice name: a language letter (one of "
                       f"{', '.join(sorted(LANGUAGES))}), f or m, an underscore and a name, e.g. af_heart.")
    return lang


def supported_languages() -> tuple[str, ...]:
    """The languages `phonemize` reads in this runtime."""
    return BROWSER_LANGUAGES if _backend.IN_BROWSER else tuple(ESPEAK_VOICES)


def _check_language(lang: str) -> None:
    if lang in supported_languages():
        return
    if lang in ("ja", "cmn"):
        raise G2PError(f"Speech in {lang} is not supported: Kokoro's {lang} voices need their own G2P, not espeak-ng.")
    if lang in ESPEAK_VOICES:
        raise G2PError(f"Speech in {lang} is not supported in the browser: its espeak-ng (npm phonemizer) reads "
                       "English only (en-us, en-gb).")
    raise G2PError(f"The language {lang!r} is not supported; use one of {', '.join(supported_languages())}.")


# ---------------------------------------------------------------------------------------------------------
# Normalisation: kokoro-js's normalize_text, rule by rule.


def _split_num(m: re.Match) -> str:
    """Years and times: "1984" -> "19 84", "1905" -> "19 oh 5", "1800s" -> "18 hundreds", "3:05" -> "3 oh 5",
    "3:00" -> "3 o'clock"; decimals and years espeak reads well (before 1100, or x00x) unchanged."""
    e = m.group(0)
    if "." in e:
        return e
    if ":" in e:
        hours, minutes = (int(x) for x in e.split(":"))
        if minutes == 0:
            return f"{hours} o'clock"
        return f"{hours} oh {minutes}" if minutes < 10 else f"{hours} {minutes}"
    year = int(e[:4])
    if year < 1100 or year % 1000 < 10:
        return e
    century, rest, plural = e[:2], int(e[2:4]), "s" if e.endswith("s") else ""
    if 100 <= year % 1000 <= 999:
        if rest == 0:
            return f"{century} hundred{plural}"
        if rest < 10:
            return f"{century} oh {rest}{plural}"
    return f"{century} {rest}{plural}"


def _flip_money(m: re.Match) -> str:
    """"$5.50" -> "5 dollars and 50 cents", "£1" -> "1 pound", "$3 million" -> "3 million dollars"."""
    e = m.group(0)
    unit = "dollar" if e[0] == "$" else "pound"
    amount = e[1:]
    if " " in amount:  # "3 million": kokoro-js tests isNaN(Number(amount)), true exactly for these
        return f"{amount} {unit}s"
    if "." not in e:
        return f"{amount} {unit}{'' if amount == '1' else 's'}"
    whole, frac = amount.split(".")
    small = int(frac.ljust(2, "0"))
    if e[0] == "$":
        small_unit = "cent" if small == 1 else "cents"
    else:
        small_unit = "penny" if small == 1 else "pence"
    return f"{whole} {unit}{'' if whole == '1' else 's'} and {small} {small_unit}"


def _point_num(m: re.Match) -> str:
    """"3.14" -> "3 point 1 4"."""
    whole, frac = m.group(0).split(".")
    return f"{whole} point {' '.join(frac)}"


_NEUTRAL_RULES = [
    # Quotes and brackets: curly singles to ', guillemets to curly doubles, curly doubles to ", and
    # parentheses to guillemets (which Kokoro's vocabulary lacks: they only separate stretches for espeak).
    (re.compile("[‘’]"), "'", 0),
    (re.compile("«"), "“", 0),
    (re.compile("»"), "”", 0),
    (re.compile("[“”]"), '"', 0),
    (re.compile(r"\("), "«", 0),
    (re.compile(r"\)"), "»", 0),
    # CJK punctuation to ASCII punctuation and a space.
    (re.compile("、"), ", ", 0),
    (re.compile("。"), ". ", 0),
    (re.compile("！"), "! ", 0),
    (re.compile("，"), ", ", 0),
    (re.compile("："), ": ", 0),
    (re.compile("；"), "; ", 0),
    (re.compile("？"), "? ", 0),
    # Whitespace other than space and newline to a space; then the first run of spaces to one (kokoro-js's
    # expression has no `g` flag, so only the first run); then blank lines' spaces go.
    (re.compile("[" + re.escape(_JS_SPACE_CHARS.replace(" ", "").replace("\n", "")) + "]"), " ", 0),
    (re.compile("  +"), " ", 1),
    (re.compile(r"(?<=\n) +(?=\n)"), "", 0),
]

_ENGLISH_RULES = [
    (re.compile(r"\bD[Rr]\.(?= [A-Z])", _A), "Doctor", 0),
    (re.compile(r"\b(?:Mr\.|MR\.(?= [A-Z]))", _A), "Mister", 0),
    (re.compile(r"\b(?:Ms\.|MS\.(?= [A-Z]))", _A), "Miss", 0),
    (re.compile(r"\b(?:Mrs\.|MRS\.(?= [A-Z]))", _A), "Mrs", 0),
    (re.compile(r"\betc\.(?! [A-Z])", _AI), "etc", 0),
    (re.compile(r"\b(y)eah?\b", _AI), r"\1e'a", 0),
    (re.compile(r"\d*\.\d+|\b\d{4}s?\b|(?<!:)\b(?:[1-9]|1[0-2]):[0-5]\d\b(?!:)", _A), _split_num, 0),
    (re.compile(r"(?<=\d),(?=\d)", _A), "", 0),
    (re.compile(r"[$£]\d+(?:\.\d+)?(?: hundred| thousand| (?:[bm]|tr)illion)*\b|[$£]\d+\.\d\d?\b", _AI),
     _flip_money, 0),
    (re.compile(r"\d*\.\d+", _A), _point_num, 0),
    (re.compile(r"(?<=\d)-(?=\d)", _A), " to ", 0),
    (re.compile(r"(?<=\d)S", _A), " S", 0),
    (re.compile(r"(?<=[BCDFGHJ-NP-TV-Z])'?s\b", _A), "'S", 0),
    (re.compile(r"(?<=X')S\b", _A), "s", 0),
    (re.compile(r"(?:[A-Za-z]\.){2,} [a-z]", _A), lambda m: m.group(0).replace(".", "-"), 0),
    (re.compile(r"(?<=[A-Z])\.(?=[A-Z])", _AI), "-", 0),
]


def normalize_text(text: str, lang: str = "en-us") -> str:
    """kokoro-js's text normalisation, rule for rule and in its order: quotes, CJK punctuation and whitespace
    for every language; for English ("en-us", "en-gb") also titles (Dr. -> Doctor, Mr. -> Mister, Ms. -> Miss,
    Mrs. -> Mrs), "etc.", "yeah", years and times ("1984" -> "19 84", "3:05" -> "3 oh 5"), thousands commas,
    money ("$5.50" -> "5 dollars and 50 cents", "£1" -> "1 pound"), decimals ("3.14" -> "3 point 1 4"), ranges
    ("10-20" -> "10 to 20"), plural acronyms ("TVs" -> "TV'S") and dotted initials ("U.S." -> "U-S."). Ends
    trimmed (of JavaScript's whitespace)."""
    rules = _NEUTRAL_RULES + (_ENGLISH_RULES if lang in ENGLISH else [])
    for pattern, repl, count in rules:
        text = pattern.sub(repl, text, count=count)
    return text.strip(_JS_SPACE_CHARS)


# ---------------------------------------------------------------------------------------------------------
# Phonemes.


def _segments(text: str) -> list[tuple[bool, str]]:
    """kokoro-js's split: (is_punctuation, text) pieces that cover `text` exactly."""
    out, at = [], 0
    for m in _PUNCTUATION_RUN.finditer(text):
        if at < m.start():
            out.append((False, text[at:m.start()]))
        out.append((True, m.group(0)))
        at = m.end()
    if at < len(text):
        out.append((False, text[at:]))
    return out


def _english_post(ps: str, lang: str) -> str:
    """kokoro-js's corrections of espeak's English for Kokoro's vocabulary and training data."""
    ps = (ps.replace("kəkˈoːɹoʊ", "kˈoʊkəɹoʊ").replace("kəkˈɔːɹəʊ", "kˈəʊkəɹəʊ")  # "Kokoro"
          .replace("ʲ", "j").replace("r", "ɹ").replace("x", "k").replace("ɬ", "l"))
    ps = re.sub(r"(?<=[a-zɹː])(?=hˈʌndɹɪd)", " ", ps)  # "twohundred" -> "two hundred"
    ps = re.sub(r' z(?=[;:,.!?¡¿—…"«»“” ]|\Z)', "z", ps)  # a lone "z" ('s) back onto its word
    if lang == "en-us":
        ps = re.sub(r"(?<=nˈaɪn)ti(?!ː)", "di", ps)  # American flap in "ninety"
    return ps.strip(_JS_SPACE_CHARS)


# misaki's EspeakG2P (Kokoro's Python pipeline for es, fr-fr, hi, it, pt-br): tied espeak phonemes to the
# single symbols Kokoro was trained on, in misaki's (sorted) order.
_MISAKI_TIED = sorted({
    "a^ɪ": "I", "a^ʊ": "W", "d^z": "ʣ", "d^ʒ": "ʤ", "e^ɪ": "A", "o^ʊ": "O", "ə^ʊ": "Q", "s^s": "S",
    "t^s": "ʦ", "t^ʃ": "ʧ", "ɔ^ɪ": "Y",
}.items())
_LANGUAGE_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")  # espeak's "(en)" around a foreign word


def _misaki_post(ps: str) -> str:
    ps = _LANGUAGE_SWITCH.sub("", ps)
    for tied, symbol in _MISAKI_TIED:
        ps = ps.replace(tied, symbol)
    ps = ps.replace(_backend.IPA_TIE, "").replace("-", "")
    return ps.replace("«", "(").replace("»", ")").strip(_JS_SPACE_CHARS)


async def _espeak(texts: list[str], lang: str) -> list[str]:
    """espeak-ng's phonemes for each text, its clause lines joined by a space (as kokoro-js joins them)."""
    if not texts:
        return []
    try:
        lines = await _backend.espeak_ipa(texts, ESPEAK_VOICES[lang], tie=lang not in ENGLISH)
    except _backend.EspeakMissing as e:
        if _backend.IN_BROWSER:
            raise G2PError(f"Speech cannot start: the app's phonemizer (espeak-ng) is not available ({e}).") from e
        raise G2PError(f"Speech needs espeak-ng, which is not installed here ({e}). Run tools/setup.sh, or "
                       "apt-get install espeak-ng.") from e
    except Exception as e:  # noqa: BLE001 - the page's phonemizer failing to load arrives as a JsException
        if _backend.IN_BROWSER:
            raise G2PError("Speech cannot start: the app could not load its phonemizer (espeak-ng); reload the "
                           f"page. ({e})") from e
        raise
    return [" ".join(ls) for ls in lines]


async def _phonemes_or_none(texts: list[str], lang: str, normalize: bool = True) -> list[str | None]:
    """Phonemes of each text as phonemize gives them, or None where espeak says nothing at all (only
    punctuation, symbols, emoji); all texts' stretches go to espeak in one call."""
    segments = [_segments(normalize_text(t, lang) if normalize else t) for t in texts]
    spoken = iter(await _espeak([s for segs in segments for is_punct, s in segs if not is_punct], lang))
    out = []
    for segs in segments:
        said, parts = False, []
        for is_punct, s in segs:
            if not is_punct:
                s = next(spoken)
                said = said or bool(s)
            parts.append(s)
        ps = "".join(parts)
        out.append((_english_post(ps, lang) if lang in ENGLISH else _misaki_post(ps)) if said else None)
    return out


async def phonemize(text: str, lang: str = "en-us", *, normalize: bool = True) -> str:
    """Phonemes of `text` for Kokoro: a str of IPA symbols (tokenize() maps them to ids).

    kokoro-js's phonemize for English: normalize_text, then the text is cut around runs of punctuation
    (;:,.!?¡¿—…"«»“”(){}[] with the spaces next to them), which stay as they are, and every stretch between
    them goes to espeak-ng on its own; espeak's clause lines are joined by a space, then Kokoro's corrections
    apply. Other languages: the same cut, espeak with tied phonemes, misaki's symbol mapping. No length
    limit here (split_sentences keeps pieces under Kokoro's).
    Raises G2PError for empty text, text with nothing to say (only punctuation, symbols or emoji that espeak
    does not read), an unsupported language, or espeak-ng missing."""
    _check_language(lang)
    if not text or not text.strip(_JS_SPACE_CHARS):
        raise G2PError("There is no text to speak.")
    (ps,) = await _phonemes_or_none([text], lang, normalize)
    if ps is None:
        raise G2PError("The text has nothing to speak: only punctuation, symbols or emoji.")
    return ps


def tokenize(phonemes: str, vocab: dict[str, int]) -> list[int]:
    """Kokoro's input ids for `phonemes`, one per symbol (a Unicode code point), without the 0 pads the model
    puts before and after. `vocab` maps symbol -> id (Kokoro's config "vocab", or the GGUF's
    tokenizer.ggml.tokens turned into {token: index}). Symbols outside it are dropped, as kokoro-js's tokenizer
    drops them (« » among them, which only separate stretches of text)."""
    return [vocab[ch] for ch in phonemes if ch in vocab]


# ---------------------------------------------------------------------------------------------------------
# Sentences: kokoro-js's TextSplitterStream, for a whole text at once.

_TERMINATORS = ".!?…。？！"
_CLOSING_AFTER_TERMINATOR = "\"')]}」』"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr sgt col gen rep sen gov lt maj capt st mt etc co inc ltd dept vs p pg jan feb mar "
    "apr jun jul aug sep sept oct nov dec sun mon tu tue tues wed th thu thur thurs fri sat".split())
_CLOSER_TO_OPENER = {")": "(", "]": "[", "}": "{", "》": "《", "〉": "〈", "›": "‹", "»": "«", "\u232a": "\u2329",
                     "」": "「", "』": "『", "〕": "〔", "】": "【"}
_OPENERS = frozenset(_CLOSER_TO_OPENER.values())
_ASCII_LETTER = re.compile("[A-Za-z]")


def _is_terminator(ch: str, newline_too: bool = True) -> bool:
    return ch in _TERMINATORS or (newline_too and ch == "\n")


def _is_space(ch: str) -> bool:
    return ch in _JS_SPACE_CHARS


def _is_abbreviation(word: str) -> bool:
    word = re.sub(r"['’]s\Z", "", word, flags=re.IGNORECASE)
    word = re.sub(r"\.+\Z", "", word)
    return word.lower() in _ABBREVIATIONS


def _track_brackets(ch: str, stack: list[str], i: int, text: str) -> None:
    """Quotes and brackets open at position i (a sentence does not end inside them). An apostrophe between two
    letters is not a quote."""
    if ch in "\"'":
        if (ch == "'" and 0 < i < len(text) - 1 and _ASCII_LETTER.match(text[i - 1])
                and _ASCII_LETTER.match(text[i + 1])):
            return
        if stack and stack[-1] == ch:
            stack.pop()
        else:
            stack.append(ch)
        return
    if ch in _OPENERS:
        stack.append(ch)
        return
    opener = _CLOSER_TO_OPENER.get(ch)
    if opener and stack and stack[-1] == opener:
        stack.pop()


def sentence_texts(text: str) -> list[str]:
    """The sentences of `text`, trimmed, as kokoro-js's TextSplitterStream gives them for the whole text pushed
    at once and the stream closed. A sentence ends at . ! ? … 。 ？ ！ or a newline, outside quotes and
    brackets, followed by whitespace, not after a known abbreviation ("Dr.", "etc.", "Jan."), a numbered-list
    number, dotted initials before a capital, a URL or e-mail address, nor a period before a lower-case word;
    the terminators, closing quotes and brackets right after it stay with it."""
    sentences: list[str] = []
    a, t = text, len(text)
    start, i, stack = 0, 0, []

    def sentence_end(at: int) -> tuple[int, int]:
        end = at
        while end + 1 < t and _is_terminator(a[end + 1], False):
            end += 1
        while end + 1 < t and a[end + 1] in _CLOSING_AFTER_TERMINATOR:
            end += 1
        nxt = end + 1
        while nxt < t and _is_space(a[nxt]):
            nxt += 1
        return end, nxt

    while i < t:
        ch = a[i]
        _track_brackets(ch, stack, i, a)
        if stack or not _is_terminator(ch):
            i += 1
            continue
        if re.search(r"(?:^|\n)\d+\Z", a[start:i], re.ASCII):  # "1." of a numbered list
            i += 1
            continue
        end, nxt = sentence_end(i)
        if i == nxt - 1 and ch != "\n":  # nothing after, or no space after ("3.14", "e.g.x")
            i += 1
            continue
        if nxt == t:  # only spaces follow: the rest is the last sentence
            break
        w = i - 1
        while w >= 0 and not _is_space(a[w]):
            w -= 1
        w = max(start, w + 1)
        word_end = w
        while word_end < t and not _is_space(a[word_end]):
            word_end += 1
        word = a[w:word_end]
        if not word:
            i += 1
            continue
        if (re.search(r"https?[,:]//", word) or "@" in word) and not _is_terminator(word[-1]):
            i = w + len(word)
            continue
        if _is_abbreviation(word):
            i += 1
            continue
        if re.fullmatch(r"(?:[A-Za-z]\.)+", word) and nxt < t and "A" <= a[nxt] <= "Z":
            i += 1
            continue
        if ch == "." and nxt < t and "a" <= a[nxt] <= "z":
            i += 1
            continue
        sentence = a[start:end + 1].strip(_JS_SPACE_CHARS)
        if sentence in ("...", "…"):
            i += 1
            continue
        if sentence:
            sentences.append(sentence)
        i = start = end + 1
    rest = a[start:].strip(_JS_SPACE_CHARS)
    if rest:
        sentences.append(rest)
    return sentences


# ---------------------------------------------------------------------------------------------------------
# Streaming: sentences under Kokoro's limit.

# Where an over-long sentence may be cut, best first: after a sentence mark (kokoro-js's splitter keeps
# sentences together inside quotes and brackets, and an apostrophe it takes for a quote can hold many), after
# clause punctuation (or right after a dash or an ellipsis between words), between words. A cut keeps the
# marks and spaces with the piece before it, and never follows an abbreviation ("Dr. Smith", "Jan. 3").
_SENTENCE_BREAK = re.compile(f"[.!?。？！]+[\"')\\]}}»”’]*{_JS_SPACE}+")
_CLAUSE_BREAK = re.compile(f"[,;:)\\]}}»”\"'’]+{_JS_SPACE}+|[—…]+{_JS_SPACE}*")
_WORD_BREAK = re.compile(f"{_JS_SPACE}+")


def _cut_after(text: str, pattern: re.Pattern) -> list[str]:
    """`text` cut just after every match of `pattern` that does not end an abbreviation."""
    pieces, at = [], 0
    for m in pattern.finditer(text):
        if not at < m.end() < len(text):
            continue
        word = text[:m.start() + 1].rsplit(None, 1)[-1] if text[:m.start() + 1].strip() else ""
        if pattern is not _WORD_BREAK and word.endswith(".") and _is_abbreviation(word):
            continue
        pieces.append(text[at:m.end()])
        at = m.end()
    pieces.append(text[at:])
    return [p for p in pieces if p]


async def _fit(text: str, ps: str | None, lang: str, max_phonemes: int) -> list[tuple[str, str | None]]:
    """(piece, phonemes or None) covering `text` (whose phonemes are `ps`) in order, every phoneme string at
    most max_phonemes long: the text itself when it fits, else its pieces cut after sentence marks, else at
    clause punctuation, else between words, else in halves (one word longer than the limit), packed back
    together while they fit."""
    if ps is None or len(ps) <= max_phonemes or len(text) < 2:
        return [(text, ps)]
    for pattern in (_SENTENCE_BREAK, _CLAUSE_BREAK, _WORD_BREAK, None):
        pieces = _cut_after(text, pattern) if pattern else [text[:len(text) // 2], text[len(text) // 2:]]
        if len(pieces) > 1:
            break
    return await _pack(pieces, await _phonemes_or_none(pieces, lang), lang, max_phonemes)


async def _pack(pieces: list[str], pieces_ps: list[str | None], lang: str,
                max_phonemes: int) -> list[tuple[str, str | None]]:
    """Consecutive pieces grouped greedily by their phoneme lengths (plus one for the space between), each
    group phonemized as one text; a group that still comes out too long (espeak reads words together a
    little differently) is halved, and a single piece is cut further by _fit."""
    groups, current, length = [], [], 0
    for piece, ps in zip(pieces, pieces_ps):
        n = len(ps) if ps else 0
        if current and length + 1 + n > max_phonemes:
            groups.append(current)
            current, length = [], 0
        current.append((piece, ps))
        length += n + (1 if length else 0)
    groups.append(current)
    out: list[tuple[str, str | None]] = []
    for group in groups:
        if len(group) == 1:
            out.extend(await _fit(group[0][0], group[0][1], lang, max_phonemes))
            continue
        text = "".join(piece for piece, _ in group).strip(_JS_SPACE_CHARS)
        (ps,) = await _phonemes_or_none([text], lang)
        if ps is None or len(ps) <= max_phonemes:
            out.append((text, ps))
        else:
            half = len(group) // 2
            for part in (group[:half], group[half:]):
                out.extend(await _pack([p for p, _ in part], [q for _, q in part], lang, max_phonemes))
    return [(text.strip(_JS_SPACE_CHARS), ps) for text, ps in out if text.strip(_JS_SPACE_CHARS)]


async def iter_sentences(text: str, lang: str = "en-us",
                         max_phonemes: int = MAX_PHONEMES) -> AsyncIterator[tuple[str, str]]:
    """(text, phonemes) for speech, sentence by sentence, each one's phonemes at most `max_phonemes` symbols
    (Kokoro's limit, 510, by default). Sentences are kokoro-js's (sentence_texts) with the phonemes
    kokoro-js's stream() gives them; a longer sentence is cut at clause punctuation, then between words, then
    inside a word. The texts, joined with single spaces, hold all of `text`'s words and marks (only the
    whitespace between sentences and cut pieces is not kept); a piece espeak says nothing for (a line of
    "***", an emoji) is joined to the piece before it (or after it, at the start).
    Raises G2PError as phonemize does (empty text, nothing to say at all, unsupported language, no espeak)."""
    _check_language(lang)
    if max_phonemes < 1:
        raise ValueError("max_phonemes must be positive")
    if not text or not text.strip(_JS_SPACE_CHARS):
        raise G2PError("There is no text to speak.")
    pending: tuple[str, str] | None = None  # a piece held back: the next one may have to take a silent piece
    silent = ""  # silent pieces before the first spoken one
    for sentence in sentence_texts(text):
        (ps,) = await _phonemes_or_none([sentence], lang)
        for piece, ps in await _fit(sentence, ps, lang, max_phonemes):
            if ps is None:
                if pending is None:
                    silent = f"{silent} {piece}" if silent else piece
                else:
                    pending = (f"{pending[0]} {piece}", pending[1])
                continue
            if silent:
                piece, silent = f"{silent} {piece}", ""
            if pending is not None:
                yield pending
            pending = (piece, ps)
    if pending is None:
        raise G2PError("The text has nothing to speak: only punctuation, symbols or emoji.")
    yield pending


async def split_sentences(text: str, lang: str = "en-us",
                          max_phonemes: int = MAX_PHONEMES) -> list[tuple[str, str]]:
    """All of iter_sentences at once: [(text, phonemes)]."""
    return [item async for item in iter_sentences(text, lang, max_phonemes)]
