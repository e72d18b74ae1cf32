"""LLaMA SentencePiece tokenizer with the release's added tokens, behaving like transformers 4.31's
slow ``LlamaTokenizer`` (legacy mode), which produced the prompts the released weights were trained on:

* text is split on added / special tokens, and whitespace on both sides of such a token is stripped
  (so the "\\n" after ``<im_end>`` disappears);
* every remaining chunk is encoded on its own, with SentencePiece's dummy-prefix space;
* decoding joins added tokens with single spaces, and puts a space before ``</s>`` unless it starts.

Implemented on ``sentencepiece`` directly so the ids never depend on a transformers version.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import sentencepiece as spm

from .config import CODEBOOK_SIZE, IMAGE_TOKEN_INDEX

SEG_TOKENS = [f"[SEG{i}]" for i in range(CODEBOOK_SIZE)]
IM_START, IM_END, IMAGE_PLACEHOLDER = "<im_start>", "<im_end>", "<image>"


class PixelLMTokenizer:
    def __init__(self, model_file: str | Path, added_tokens: dict[str, int] | None = None) -> None:
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        base = self.sp.get_piece_size()
        if added_tokens is None:  # the release's order on a plain base vocabulary
            added_tokens = {tok: base + i for i, tok in enumerate(SEG_TOKENS + [IM_START, IM_END])}
        self.added_tokens = dict(added_tokens)
        self.added_by_id = {i: t for t, i in self.added_tokens.items()}
        missing = [t for t in SEG_TOKENS if t not in self.added_tokens]
        if missing:
            raise ValueError(f"tokenizer lacks the codebook tokens {missing}")
        if len(set(self.added_tokens.values())) != len(self.added_tokens):
            raise ValueError(f"added tokens share ids: {self.added_tokens} (each token needs its own id)")
        clash = [t for t, i in self.added_tokens.items() if i < base]
        if clash:
            raise ValueError(f"added tokens {clash} reuse ids of the base vocabulary ({base} pieces)")
        self.bos_id, self.eos_id, self.unk_id = self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id()
        self.special_pieces = {self.sp.id_to_piece(i) for i in (self.bos_id, self.eos_id, self.unk_id)}
        split_on = sorted(set(self.added_tokens) | self.special_pieces, key=len, reverse=True)
        self._split_re = re.compile("(" + "|".join(re.escape(t) for t in split_on) + ")")

    @classmethod
    def from_folder(cls, folder: str | Path) -> "PixelLMTokenizer":
        folder = Path(folder)
        model_file = folder / "tokenizer.model"
        if not model_file.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.model (the model folder must carry its tokenizer)")
        added_file = folder / "added_tokens.json"
        added = json.loads(added_file.read_text()) if added_file.is_file() else None
        return cls(model_file, added)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / "tokenizer.model").write_bytes(self.sp.serialized_model_proto())
        (folder / "added_tokens.json").write_text(json.dumps(self.added_tokens, indent=2, sort_keys=True))
        (folder / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2))
        (folder / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "LlamaTokenizer", "legacy": True, "add_bos_token": True, "add_eos_token": False,
             "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
             "clean_up_tokenization_spaces": False, "padding_side": "right"}, indent=2))

    def __len__(self) -> int:
        return max(self.sp.get_piece_size(), max(self.added_tokens.values()) + 1)

    @property
    def seg_token_ids(self) -> list[int]:
        return [self.added_tokens[t] for t in SEG_TOKENS]

    # ------------------------------------------------------------------------------ encoding
    def _token_id(self, piece: str) -> int:
        return self.added_tokens[piece] if piece in self.added_tokens else self.sp.piece_to_id(piece)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        parts = self._split_re.split(text)
        specials = set(self.added_tokens) | self.special_pieces
        for i, part in enumerate(parts):  # strip whitespace around every special token
            if part in specials:
                if i > 0:
                    parts[i - 1] = parts[i - 1].rstrip()
                if i + 1 < len(parts):
                    parts[i + 1] = parts[i + 1].lstrip()
        ids = [self.bos_id] if add_bos else []
        for part in parts:
            if not part:
                continue
            ids.extend([self._token_id(part)] if part in specials else self.sp.encode(part))
        return ids

    def encode_with_image(self, prompt: str) -> list[int]:
        """Tokenize each chunk around <image> separately; only the first keeps BOS (LLaVA)."""
        chunks = [self.encode(chunk) for chunk in prompt.split(IMAGE_PLACEHOLDER)]
        ids = chunks[0]
        for chunk in chunks[1:]:
            ids = ids + [IMAGE_TOKEN_INDEX] + chunk[1:]
        return ids

    # ------------------------------------------------------------------------------ decoding
    def stream_piece(self, token_id: int) -> str | bytes:
        """What one generated token adds to a streamed answer: text, or one raw byte (byte-fallback
        pieces of a multi-byte character, to be joined by the caller); "" for special and codebook
        tokens, so streamed text only ever grows."""
        if token_id in self.added_by_id or token_id in (self.bos_id, self.eos_id, self.unk_id):
            return ""
        if self.sp.is_byte(token_id):
            return bytes([int(self.sp.id_to_piece(token_id)[3:-1], 16)])
        return self.sp.id_to_piece(token_id).replace("\u2581", " ")

    def _pieces_to_text(self, pieces: list[str]) -> str:
        out, run, prev_special = "", [], False
        for i, piece in enumerate(pieces):
            if piece in self.special_pieces:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp.decode_pieces(run) + piece
                run, prev_special = [], True
            else:
                run.append(piece)
                prev_special = False
        return out + self.sp.decode_pieces(run)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        texts, run = [], []
        for i in ids:
            if skip_special_tokens and (i in (self.bos_id, self.eos_id, self.unk_id)
                                        or self.added_by_id.get(i) in (IM_START, IM_END)):
                continue
            if i in self.added_by_id:
                if run:
                    texts.append(self._pieces_to_text(run))
                    run = []
                texts.append(self.added_by_id[i])
            else:
                run.append(self.sp.id_to_piece(i))
        if run:
            texts.append(self._pieces_to_text(run))
        return " ".join(texts)
