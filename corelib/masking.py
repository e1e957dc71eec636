"""PII masking: deterministic HMAC-SHA256 tokens, redaction, and detectors for free text.

`Mask({"card.number": "token", "customer.name": "redact", "note": "detect"}, key=...)`
masks outputs before any sink sees them (`Pipeline(mask=...)`), or any plain value
(`mask.apply(value)`). Rules:

- `token`: the value becomes `tok_` and 32 hex digits of HMAC-SHA256 under the secret
  key, so the same input gives the same token and joins still work; without the key
  nobody can compute a token for a guessed value;
- `redact`: the value becomes `[redacted]`;
- `detect`: free text keeps its words, but what a detector finds (emails, phone
  numbers) becomes a token.

Paths are dotted; `*` stands for every member of an object or element of a list
(`items.*.email`). `Masked("token")` on a pydantic model's field says the same, and
`Mask.for_model(Model, key=...)` collects those annotations.

With a mask, what the processor raises is scrubbed before the runner sees it: where the
text of the error quotes a masked value of the event's payload, the value shows as its
token (in the dead-letter reason, the traceback and the log line alike), and pydantic
validation errors lose their input values. The dead letter itself keeps the original
event, since a replay needs it: its sink must be guarded like the source.

Keys come from an environment variable, AWS Secrets Manager or Azure Key Vault
(`MaskingKey`), fetched on first use and cached; the clients are passed in, so the core
imports no cloud SDK.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import os
import re
import threading
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from onceflow.envelopes import Envelope, payload_document
from onceflow.errors import ConfigurationError, PermanentError
from onceflow.event import Event
from onceflow.serialization import dumps

__all__ = [
    "DETECTORS",
    "Mask",
    "Masked",
    "MaskedError",
    "MaskedPermanentError",
    "MaskingKey",
    "Rule",
]

Rule = Literal["token", "redact", "detect"]
REDACTED = "[redacted]"

DETECTORS: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
    # International or national numbers of 7 to 15 digits, with the usual separators.
    "phone": re.compile(r"(?<![\w+])\+?\d(?:[ ().-]{0,2}\d){6,14}(?!\w)"),
}
"""Regular expressions for PII in free text, by name."""


class MaskingKey:
    """The secret key tokens are made with: fetched on first use, cached for `ttl` seconds."""

    def __init__(
        self, fetch: Callable[[], bytes | str], *, ttl: float = 300.0, name: str = ""
    ) -> None:
        self._fetch = fetch
        self.ttl = ttl
        self.name = name
        self._value: bytes | None = None
        self._fetched_at = 0.0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MaskingKey({self.name or 'custom'})"  # never the key itself

    @classmethod
    def of(cls, value: bytes | str) -> MaskingKey:
        """A fixed key (tests, or a key the caller already holds)."""
        return cls(lambda: value, ttl=float("inf"), name="given")

    @classmethod
    def from_env(cls, variable: str = "ONCEFLOW_MASK_KEY", *, ttl: float = 300.0) -> MaskingKey:
        """The key in environment variable `variable`."""

        def fetch() -> str:
            value = os.environ.get(variable)
            if not value:
                raise ConfigurationError(f"environment variable {variable} holds no masking key")
            return value

        return cls(fetch, ttl=ttl, name=f"env {variable}")

    @classmethod
    def from_aws_secrets_manager(
        cls, client: Any, secret_id: str, *, ttl: float = 300.0
    ) -> MaskingKey:
        """The key in an AWS Secrets Manager secret; `client` is a boto3 secretsmanager client."""

        def fetch() -> bytes | str:
            answer = client.get_secret_value(SecretId=secret_id)
            value: bytes | str | None = answer.get("SecretString") or answer.get("SecretBinary")
            if not value:
                raise ConfigurationError(f"secret {secret_id} holds no masking key")
            return value

        return cls(fetch, ttl=ttl, name=f"aws secret {secret_id}")

    @classmethod
    def from_azure_key_vault(cls, client: Any, name: str, *, ttl: float = 300.0) -> MaskingKey:
        """The key in an Azure Key Vault secret; `client` is an azure-keyvault-secrets
        `SecretClient`."""

        def fetch() -> str:
            value: str | None = client.get_secret(name).value
            if not value:
                raise ConfigurationError(f"Key Vault secret {name} holds no masking key")
            return value

        return cls(fetch, ttl=ttl, name=f"key vault secret {name}")

    def value(self) -> bytes:
        """The key's bytes, fetched again once the cached copy is `ttl` seconds old."""
        now = time.monotonic()
        held = self._value
        if held is not None and now - self._fetched_at < self.ttl:
            return held
        with self._lock:
            if self._value is None or now - self._fetched_at >= self.ttl:
                fetched = self._fetch()
                key = fetched.encode() if isinstance(fetched, str) else bytes(fetched)
                if len(key) < 16:
                    raise ConfigurationError(f"{self!r}: a masking key needs 16 bytes or more")
                self._value, self._fetched_at = key, now
            return self._value


class Masked:
    """Field annotation: `Annotated[str, Masked("token")]` masks the field by `rule`."""

    __slots__ = ("rule",)

    def __init__(self, rule: Rule = "token") -> None:
        if rule not in ("token", "redact", "detect"):
            raise ConfigurationError(f"masking rule {rule!r}: use token, redact or detect")
        self.rule = rule

    def __repr__(self) -> str:
        return f"Masked({self.rule!r})"


class MaskedError(Exception):
    """A processor's error with the masked values of its event's payload scrubbed away."""


class MaskedPermanentError(PermanentError):
    """A processor's permanent error with the masked values scrubbed away."""


class Mask:
    """Masks chosen fields of plain data: tokens, redaction, or detectors over free text."""

    def __init__(
        self,
        fields: Mapping[str, Rule],
        *,
        key: MaskingKey | bytes | str | None = None,
        detectors: Sequence[str] = ("email", "phone"),
    ) -> None:
        for path, rule in fields.items():
            Masked(rule)  # checks the rule
            if not path or not all(path.split(".")):
                raise ConfigurationError(
                    f"masking path {path!r} must be dotted, like 'card.number'"
                )
        unknown = [d for d in detectors if d not in DETECTORS]
        if unknown:
            raise ConfigurationError(f"unknown detectors {unknown}; known: {sorted(DETECTORS)}")
        self.fields = dict(fields)
        self._paths = [(tuple(p.split(".")), r) for p, r in self.fields.items()]
        self._detectors = [DETECTORS[d] for d in detectors]
        if key is None:
            key = MaskingKey.from_env()
        self.key = key if isinstance(key, MaskingKey) else MaskingKey.of(key)

    def __repr__(self) -> str:
        return f"Mask({self.fields!r})"

    @classmethod
    def for_model(
        cls,
        model: type[BaseModel],
        *,
        key: MaskingKey | bytes | str | None = None,
        detectors: Sequence[str] = ("email", "phone"),
    ) -> Mask:
        """The mask the model's `Masked(...)` field annotations describe."""
        return cls(dict(_annotated_paths(model, "")), key=key, detectors=detectors)

    # -- masking -------------------------------------------------------------------------

    def token(self, value: Any) -> str:
        """The deterministic token of `value` (text as it is, anything else as JSON)."""
        text = value if isinstance(value, str) else dumps(value)
        digest = hmac.new(self.key.value(), text.encode("utf-8"), hashlib.sha256).hexdigest()
        return "tok_" + digest[:32]

    def detect(self, text: str) -> str:
        """`text` with what the detectors find turned into tokens."""
        for pattern in self._detectors:
            text = pattern.sub(lambda m: self.token(m.group(0)), text)
        return text

    def apply(self, value: Any) -> Any:
        """A copy of plain `value` with every masked path masked (absent paths are skipped)."""
        for path, rule in self._paths:
            value = self._at(value, path, rule)
        return value

    def _at(self, value: Any, path: tuple[str, ...], rule: Rule) -> Any:
        if not path:
            return self._masked(value, rule)
        head, rest = path[0], path[1:]
        if isinstance(value, dict):
            if head == "*":
                return {k: self._at(v, rest, rule) for k, v in value.items()}
            if head not in value:
                return value
            return {**value, head: self._at(value[head], rest, rule)}
        if isinstance(value, list):
            if head == "*":
                return [self._at(v, rest, rule) for v in value]
            if head.isdigit() and int(head) < len(value):
                copy = list(value)
                copy[int(head)] = self._at(value[int(head)], rest, rule)
                return copy
        return value

    def _masked(self, value: Any, rule: Rule) -> Any:
        if value is None:
            return None
        if rule == "redact":
            return REDACTED
        if rule == "detect":
            if isinstance(value, str):
                return self.detect(value)
            if isinstance(value, list | dict):
                return _map_strings(value, self.detect)
            return value
        return self.token(value)

    # -- keeping masked values out of errors and logs -----------------------------------

    def secrets_in(self, document: Any) -> dict[str, str]:
        """The texts of the masked values in `document`, each with what replaces it."""
        found: dict[str, str] = {}
        for path, rule in self._paths:
            for value in _values_at(document, path):
                if value is None:
                    continue
                if rule == "detect":
                    for text in _strings(value):
                        for pattern in self._detectors:
                            for match in pattern.findall(text):
                                found[match] = self.token(match)
                    continue
                for text in {value if isinstance(value, str) else dumps(value), repr(value)}:
                    if len(text) >= 3:  # shorter texts are everywhere; they reveal little
                        found[text] = REDACTED if rule == "redact" else self.token(value)
        return found

    def scrub(self, text: str, secrets: Mapping[str, str]) -> str:
        """`text` with every secret in it replaced, then the detectors applied."""
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, secrets[secret])
        return self.detect(text)

    def log_filter(self) -> logging.Filter:
        """A logging filter that runs the detectors over every record's message."""
        mask = self

        class _Scrub(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                message = record.getMessage()
                scrubbed = mask.detect(message)
                if scrubbed != message:
                    record.msg, record.args = scrubbed, None
                return True

        return _Scrub()

    def guard(
        self,
        call: Callable[[Event], Any],
        *,
        envelope: Envelope | None,
        permanent: tuple[type[BaseException], ...],
    ) -> Callable[[Event], Any]:
        """`call` whose errors are re-raised with the event's masked values scrubbed."""

        def scrubbed(event: Event, exc: Exception) -> Exception:
            try:
                document = payload_document(event.data if envelope is None else envelope(event))
            except Exception:
                document = None  # not JSON: no fields to find, the detectors still run
            if isinstance(exc, ValidationError):
                from onceflow.attempts import summary  # the runner's own, input-free form

                text = summary(exc)
            else:
                text = f"{type(exc).__name__}: {exc}"
            try:
                text = self.scrub(text, self.secrets_in(document))
            except Exception:
                # No key, no tokens: the text is withheld rather than shown unmasked.
                text = f"{type(exc).__name__} (its text is withheld: no masking key to scrub it)"
            kind = MaskedPermanentError if isinstance(exc, permanent) else MaskedError
            return kind(text)

        if inspect.iscoroutinefunction(call):

            async def guarded_async(event: Event) -> Any:
                try:
                    return await call(event)
                except Exception as exc:
                    raise scrubbed(event, exc) from None

            return guarded_async

        def guarded(event: Event) -> Any:
            try:
                return call(event)
            except Exception as exc:
                raise scrubbed(event, exc) from None

        return guarded


def _values_at(value: Any, path: tuple[str, ...]) -> Iterator[Any]:
    if not path:
        yield value
        return
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        if head == "*":
            for v in value.values():
                yield from _values_at(v, rest)
        elif head in value:
            yield from _values_at(value[head], rest)
    elif isinstance(value, list):
        if head == "*":
            for v in value:
                yield from _values_at(v, rest)
        elif head.isdigit() and int(head) < len(value):
            yield from _values_at(value[int(head)], rest)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, change) for v in value]
    return value


def _annotated_paths(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, Rule]]:
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        for meta in info.metadata:
            if isinstance(meta, Masked):
                yield path, meta.rule
        yield from _nested_paths(info.annotation, path)


def _nested_paths(annotation: Any, path: str) -> Iterator[tuple[str, Rule]]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *metadata = typing.get_args(annotation)
        for meta in metadata:
            if isinstance(meta, Masked):
                yield path, meta.rule
        yield from _nested_paths(base, path)
    elif origin in (list, tuple, set, frozenset, Sequence):
        for arg in typing.get_args(annotation)[:1]:
            yield from _nested_paths(arg, f"{path}.*")
    elif origin is not None:  # a union, Optional: look inside each member
        for arg in typing.get_args(annotation):
            yield from _nested_paths(arg, path)
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _annotated_paths(annotation, f"{path}.")
