"""One model as one row of the table: flat token arrays, each part with its SHA-256, one Arrow record batch of the
table's schema, and back to the same tokens."""

from __future__ import annotations

import json

import torch

from geosane import storage
from geosane.collection.rows import decode_tokens, model_row, row_batch, table_schema, token_arrays
from geosane.tokenizer import TokenizerConfig, tokenize

from .helpers import timm_state


def test_a_row_holds_a_models_tokens_and_gives_them_back() -> None:
    config = TokenizerConfig(token_size=32)
    tokens = tokenize(timm_state("test_resnet"), config)
    record = json.dumps({"id": "0123abcd", "name": "m"})
    row = model_row(record, "{}", b"kept", token_arrays(tokens))
    assert row["id"] == "0123abcd" and row["record_sha256"] == storage.sha256(record)
    assert row["kept_sha256"] == storage.sha256(b"kept") and row["layout_sha256"] == storage.sha256("{}")
    batch = row_batch(row, table_schema(config))
    assert batch.num_rows == 1 and batch.schema.metadata[b"token_size"] == b"32"
    cells = {name: batch.column(name)[0].as_py() for name in ("tokens", "valid", "positions")}
    back = decode_tokens(cells, tokens.layout, tokens.kept)
    assert torch.equal(back.tokens, tokens.tokens) and torch.equal(back.positions, tokens.positions)
    assert torch.equal(back.valid, tokens.valid.long())
