"""Exceptions of the collector package.

    CollectorError
    ├── SpanMappingError         an LLM span whose values cannot make a request row
    ├── OtlpDecodeError          an OTLP/HTTP body that is not a valid trace export
    │   ├── UnsupportedContent   content type or encoding the receiver does not speak
    │   └── PayloadTooLarge      the body (after decompression) exceeds the size limit
    ├── WriterError              the writer was misconfigured or misused
    │   └── SpoolError           the spool directory or a spool record is unusable
    ├── PricingError             a price table or pool pricing is invalid
    ├── ScrapeError              a target could not be scraped (fetch, status, body)
    │   ├── ScrapeParseError     the body is not Prometheus text / OpenMetrics
    │   └── DiscoveryError       a file_sd file is unreadable or malformed
    └── NvmlUnavailable          NVML cannot be initialised (no driver or library)

Adapters translate third-party exceptions (protobuf, json, gzip, httpx, pynvml) into these with
``raise ... from exc``. Other collector modules add their own subclasses here.
"""

from __future__ import annotations


class CollectorError(Exception):
    """Base of every error the collector package raises on purpose."""


class SpanMappingError(CollectorError, ValueError):
    """A span was recognised as an LLM request but its attributes are unusable."""


class OtlpDecodeError(CollectorError, ValueError):
    """The body is not a valid OTLP ``ExportTraceServiceRequest``; the message says why."""


class UnsupportedContent(OtlpDecodeError):
    """The content type or content encoding is not one the receiver accepts."""


class PayloadTooLarge(OtlpDecodeError):
    """The body, or what it decompresses to, is larger than the configured limit."""


class WriterError(CollectorError):
    """The writer was misconfigured or misused (bad bounds, stopped writer started again)."""


class SpoolError(WriterError):
    """The spool directory cannot be used, or a spool record cannot be written or read."""


class PricingError(CollectorError, ValueError):
    """A price entry or pool price is invalid; the message names the entry."""


class ScrapeError(CollectorError):
    """A target could not be scraped: fetch failed, bad status, or unparsable body."""


class ScrapeParseError(ScrapeError, ValueError):
    """The body is not valid Prometheus text / OpenMetrics; the message says where."""


class DiscoveryError(ScrapeError, ValueError):
    """A file_sd file is unreadable or not in the expected shape; names file and problem."""


class NvmlUnavailable(CollectorError):
    """NVML could not be initialised (no driver, no library); carries the NVML error name."""
