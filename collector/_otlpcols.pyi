"""Types of the C extension (collector/_otlpcols.c, collector/_otlpmap.c)."""

MAX_KEYS: int
SPAN_SIZE: int
ATTR_SIZE: int
OUT_SIZE: int

def decode(
    data: bytes, keys: tuple[str, ...], markers: tuple[int, ...], vllm_name: str, /
) -> tuple[int, int, bytes, int, bytes, bytes, list[str], bytes, bytes] | None: ...
def gather(offsets: bytes, data: bytes, codes: object, /) -> tuple[bytes, bytes]: ...
def map(
    spans: object,
    span_attrs: object,
    res_attrs: bytes,
    nkeys: int,
    plan: bytes,
    strings: list[str],
    nstr: int,
    non_inference: frozenset[str],
    pool_by_model: dict[str, int],
    default_pool: int,
    other_code: int,
    /,
) -> tuple[bytes, bytes]: ...
def attr_map(
    str_offsets: bytes, str_data: bytes, kept: bytes, ncols: int, names: object, rows: object, /
) -> tuple[bytes, bytes, bytes, bytes, bytes]: ...
