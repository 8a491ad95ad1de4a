"""Route modules; each exposes ``router`` (an ``APIRouter``) and is included by name order."""
