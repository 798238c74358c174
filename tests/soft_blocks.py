"""Where a prompt's soft tokens go: shared by the vision and audio parity tests."""


def soft_blocks(tokens, soft, soft_id: int) -> list:
    """(offset, tensor, n) for each run of soft_id in tokens, taking the tensors of `soft` in order; every
    run must be exactly its tensor's row count and every tensor must be used."""
    blocks, i, k = [], 0, 0
    while i < len(tokens):
        if tokens[i] == soft_id:
            n = soft[k].shape[0]
            assert tokens[i: i + n] == [soft_id] * n
            blocks.append((i, soft[k], n))
            i, k = i + n, k + 1
        else:
            i += 1
    assert k == len(soft)
    return blocks
