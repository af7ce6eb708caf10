"""Byte-level BPE (GPT-2 style) trainer and encoder, written as a Hugging Face tokenizer.json.

No `tokenizers` package needed: the trainer counts pre-tokenized words, then merges the most frequent
adjacent symbol pair again and again, updating the pair counts incrementally (only the words that
contain the merged pair are revisited), so a few MB of text trains in seconds.

Pre-tokenization is GPT-2's: the split regex
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
then every byte is mapped to a printable character (bytes_to_unicode). Python's `re` has no \\p{L},
so the trainer and the encoder here accept ASCII text only, where \\p{L} is [A-Za-z] and \\p{N} is
[0-9] and the pattern below is exactly GPT-2's. (The C++ and JavaScript tokenizers that read the
written tokenizer.json handle any text: the ByteLevel pre-tokenizer carries the real pattern.)
"""

import collections
import heapq
import json
import re

GPT2_PATTERN_ASCII = re.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def bytes_to_unicode():
    """GPT-2's reversible byte -> printable unicode character table."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()


def pretokenize(text):
    """GPT-2 split + byte mapping (ASCII text only, see the module docstring)."""
    if not text.isascii():
        raise ValueError("bpe.py pre-tokenizes ASCII text only")
    return ["".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8")) for piece in GPT2_PATTERN_ASCII.findall(text)]


def train_bpe(texts, vocab_size, special_tokens, min_frequency=2, log=print):
    """Train merges on an iterable of ASCII texts; returns (vocab dict token->id, merges list of pairs).

    ids: special tokens first (0..), then the 256 byte characters in byte order, then one token per
    merge in merge order. Ties between equally frequent pairs go to the lexicographically smallest
    pair, so training is deterministic.
    """
    counts = collections.Counter()
    for t in texts:
        counts.update(pretokenize(t))
    words = [list(w) for w in sorted(counts)]  # sorted: deterministic order
    freq = [counts[w] for w in sorted(counts)]
    log(f"bpe: {sum(freq)} words, {len(words)} distinct")

    vocab = {}
    for s in special_tokens:
        vocab[s] = len(vocab)
    for b in range(256):
        vocab[BYTE_TO_CHAR[b]] = len(vocab)

    pair_count = collections.defaultdict(int)
    where = collections.defaultdict(set)
    for wi, syms in enumerate(words):
        for p in zip(syms, syms[1:]):
            pair_count[p] += freq[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)

    merges = []
    while len(vocab) < vocab_size and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc:
            continue  # stale entry
        if -negc < min_frequency:
            break
        a, b = pair
        new = a + b
        merges.append(pair)
        if new not in vocab:
            vocab[new] = len(vocab)
        touched = set()
        for wi in sorted(where.pop(pair, ())):
            syms = words[wi]
            f = freq[wi]
            # remove this word's old pairs, merge left to right, add its new pairs
            for p in zip(syms, syms[1:]):
                pair_count[p] -= f
                touched.add(p)
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where[p].add(wi)
                touched.add(p)
        pair_count.pop(pair, None)
        for p in touched:
            c = pair_count.get(p, 0)
            if c > 0:
                heapq.heappush(heap, (-c, p))
            else:
                pair_count.pop(p, None)
                where.pop(p, None)
        if len(merges) % 500 == 0:
            log(f"bpe: {len(merges)} merges, last {new!r} ({-negc})")
    log(f"bpe: {len(merges)} merges, vocabulary {len(vocab)}")
    return vocab, merges


class Encoder:
    """Encodes ASCII text as the tokenizer.json written by tokenizer_json() does (no added tokens in the text)."""

    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.ranks = {p: i for i, p in enumerate(merges)}
        self.cache = {}

    def bpe(self, word):
        hit = self.cache.get(word)
        if hit is not None:
            return hit
        sym = list(word)
        while len(sym) > 1:
            best, at = None, 0
            for i in range(len(sym) - 1):
                r = self.ranks.get((sym[i], sym[i + 1]))
                if r is not None and (best is None or r < best):
                    best, at = r, i
            if best is None:
                break
            sym[at:at + 2] = [sym[at] + sym[at + 1]]
        ids = [self.vocab[s] for s in sym]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for w in pretokenize(text):
            ids.extend(self.bpe(w))
        return ids

    def decode(self, ids):
        inv = {i: t for t, i in self.vocab.items()}
        char_to_byte = {c: b for b, c in BYTE_TO_CHAR.items()}
        return bytes(char_to_byte[c] for i in ids for c in inv[i]).decode("utf-8", errors="replace")


def tokenizer_json(vocab, merges, special_tokens, bos_token=None):
    """The Hugging Face tokenizer.json: BPE model, ByteLevel pre-tokenizer/decoder, added special tokens,
    and (with bos_token) a TemplateProcessing post-processor that puts BOS first, as Llama's does."""
    added = [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in special_tokens]
    post = None
    if bos_token is not None:
        bos = {"SpecialToken": {"id": bos_token, "type_id": 0}}
        post = {
            "type": "TemplateProcessing",
            "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": bos_token, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos_token: {"id": bos_token, "ids": [vocab[bos_token]], "tokens": [bos_token]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges],
        },
    }


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")
