"""Collections: the models GeoSANE learns from, as tokens in one versioned Lance table at any fsspec URL.

Owns, in the order a model travels: the source readers (``sources``: files, directories, object storage, timm and
the ``pretrained`` catalogue, never unpickling code), the ``collect`` stage, each model's record and content id
(``records``), the table's rows (``rows``) and the :class:`Collection` that reads and writes them (``table``),
verification that names damaged files and models (``verify``), and the read-only first layout (``legacy``).

May import: the shared pieces (``geosane.errors``, ``storage``, ``tokenizer``, ``version``, ``config``) and
``geosane.datasets`` (the data root, beside which the real weights lie). Never a
later stage: the autoencoder, training, generation and the bench read collections; a collection knows none of them.
"""

from geosane.collection.records import ID_LENGTH, RECORD_TAGS, ModelRecord, make_record, model_id, parse_tags
from geosane.collection.rows import TABLE
from geosane.collection.sources import ModelSource
from geosane.collection.stage import collect
from geosane.collection.table import Collection

__all__ = [
    "Collection",
    "ID_LENGTH",
    "ModelRecord",
    "ModelSource",
    "RECORD_TAGS",
    "TABLE",
    "collect",
    "make_record",
    "model_id",
    "parse_tags",
]
