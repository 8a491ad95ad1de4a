"""Types of the C extension (collector/_otlpcols.c)."""

MAX_KEYS: int
SPAN_SIZE: int
ATTR_SIZE: int

def decode(
    data: bytes, keys: tuple[str, ...], markers: tuple[int, ...], vllm_name: str, /
) -> tuple[int, int, bytes, int, bytes, bytes, list[str], bytes, bytes] | None: ...
def gather(offsets: bytes, data: bytes, codes: object, /) -> tuple[bytes, bytes]: ...
