"""PII masking: tokens, redaction, detectors, keys from three places, and nothing leaking.

Masked outputs are checked on memory and on SQLite. Keys: an environment variable, AWS
Secrets Manager on the moto server, and Azure Key Vault through the real
`azure-keyvault-secrets` client whose HTTP requests are answered in process (there is no
local Key Vault server: the client's pipeline, request and response handling run; the
vault's authentication challenge and access policies do not).
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from onceflow import Event, PermanentError, Pipeline
from onceflow.adapters.local import SqliteIdempotencyStore, SqliteSink
from onceflow.adapters.memory import MemoryIdempotencyStore, MemorySink
from onceflow.masking import Mask, Masked, MaskingKey
from tests.support.servers import MotoServer

KEY = "k" * 32
CARD, EMAIL, PHONE, NAME = (
    "4929123456781234",
    "alice@example.com",
    "+44 20 7946 0958",
    "Alice Smith",
)


def mask(**options: Any) -> Mask:
    fields = {"card": "token", "name": "redact", "note": "detect", "items.*.email": "token"}
    return Mask(fields, key=KEY, **options)


def test_tokens_are_deterministic_keyed_and_hide_the_value() -> None:
    m = mask()
    assert m.token(CARD) == m.token(CARD) and m.token(CARD).startswith("tok_")
    assert CARD not in m.token(CARD) and len(m.token(CARD)) == 36
    assert Mask({"card": "token"}, key="x" * 32).token(CARD) != m.token(CARD)
    assert m.token(12) == m.token("12")  # a token is of the text: joins across systems hold


def test_apply_masks_paths_redacts_and_detects_in_free_text() -> None:
    m = mask()
    value = {
        "card": CARD,
        "name": NAME,
        "note": f"mail {EMAIL} or call {PHONE} today",
        "items": [{"email": EMAIL, "qty": 1}, {"qty": 2}],
        "amount": 5,
    }
    masked = m.apply(value)
    assert masked["card"] == m.token(CARD) and masked["name"] == "[redacted]"
    assert masked["note"] == f"mail {m.token(EMAIL)} or call {m.token(PHONE)} today"
    assert masked["items"] == [{"email": m.token(EMAIL), "qty": 1}, {"qty": 2}]
    assert masked["amount"] == 5 and value["card"] == CARD  # the input is not changed
    assert m.apply({"other": 1}) == {"other": 1}


class Customer(BaseModel):
    name: Annotated[str, Masked("redact")]
    emails: list[Annotated[str, Masked("token")]] = []


class Charge(BaseModel):
    card: Annotated[str, Masked()]
    customer: Customer
    note: Annotated[str, Masked("detect")] = ""
    amount: int


def test_field_annotations_describe_the_mask() -> None:
    m = Mask.for_model(Charge, key=KEY)
    assert m.fields == {
        "card": "token",
        "customer.name": "redact",
        "customer.emails.*": "token",
        "note": "detect",
    }


def charge_event(n: int, **extra: Any) -> Event:
    body = {"card": CARD, "customer": {"name": NAME, "emails": [EMAIL]}, "amount": n, **extra}
    return Event(id=f"c{n}", source="charges", data=json.dumps(body).encode())


def book(c: Charge) -> Charge:
    return c


def test_pipeline_masks_outputs_before_any_sink(tmp_path: Path) -> None:
    m = Mask.for_model(Charge, key=KEY)
    sink = MemorySink()
    Pipeline(book, sink, MemoryIdempotencyStore(), mask=m).run_batch([charge_event(1)])
    (row,) = sink.values()
    assert row["card"] == m.token(CARD) and row["customer"]["name"] == "[redacted]"
    assert row["customer"]["emails"] == [m.token(EMAIL)]
    # The same on SQLite: the stored text holds no raw value.
    db = tmp_path / "state.db"
    Pipeline(book, SqliteSink(db), SqliteIdempotencyStore(db), mask=m).run_batch([charge_event(2)])
    import sqlite3

    with sqlite3.connect(db) as conn:
        (text,) = conn.execute("SELECT value FROM outputs").fetchone()
    assert CARD not in text and NAME not in text and EMAIL not in text
    assert m.token(CARD) in text


class Strict(BaseModel):
    card: str
    amount: int


def test_no_masked_value_in_a_reason_traceback_or_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Mask.for_model(Charge, key=KEY)

    def leaky(c: Charge) -> None:
        if c.amount == 1:
            raise PermanentError(f"card {c.card} of {c.customer.name} declined")
        if c.amount == 2:
            Strict(card=c.card, amount=c.customer.name)  # type: ignore[arg-type]  # pydantic quotes the input
        raise RuntimeError(f"gateway timeout for {c.customer.emails[0]}")

    letters = MemorySink()
    pipe = Pipeline(
        leaky, MemorySink(), MemoryIdempotencyStore(), letters, mask=m, max_deliveries=1
    )
    pipe.retry = pipe.retry.__class__(attempts=1)
    with caplog.at_level(logging.DEBUG, logger="onceflow"):
        result = pipe.run_batch([charge_event(1), charge_event(2), charge_event(3)])
    assert sorted(result.dead_lettered) == ["c1", "c2", "c3"]
    texts = [r.getMessage() for r in caplog.records]
    for letter in letters.values():
        texts += [letter["message"], letter["traceback"]]
    texts += [f.text for f in result.failures.values()]
    for text in texts:
        for secret in (CARD, NAME, EMAIL):
            assert secret not in text, text
    assert any(m.token(CARD) in t for t in texts)  # the reason still says which card
    assert result.failures["c1"].kind.name == "PERMANENT_ERROR"
    assert result.failures["c3"].kind.name == "DELIVERIES_EXHAUSTED"


def test_log_filter_runs_the_detectors(caplog: pytest.LogCaptureFixture) -> None:
    m = mask()
    logger = logging.getLogger("tests.masking")
    logger.addFilter(m.log_filter())
    with caplog.at_level(logging.INFO, logger="tests.masking"):
        logger.info("signup from %s", EMAIL)
    assert caplog.records[0].getMessage() == f"signup from {m.token(EMAIL)}"


# -- where the key comes from -----------------------------------------------------------------


def test_key_from_an_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONCEFLOW_MASK_KEY", KEY)
    assert Mask({"card": "token"}).token(CARD) == mask().token(CARD)
    monkeypatch.setenv("ONCEFLOW_MASK_KEY", "short")
    from onceflow import ConfigurationError

    with pytest.raises(ConfigurationError, match="16 bytes"):
        Mask({"card": "token"}).token(CARD)
    assert "short" not in repr(MaskingKey.from_env())


@pytest.mark.emulator
def test_key_from_aws_secrets_manager_is_cached(moto: MotoServer) -> None:
    client = moto.client("secretsmanager")
    name = f"onceflow-mask-{uuid.uuid4().hex[:8]}"
    client.create_secret(Name=name, SecretString=KEY)
    key = MaskingKey.from_aws_secrets_manager(client, name, ttl=3600)
    m = Mask({"card": "token"}, key=key)
    assert m.token(CARD) == mask().token(CARD)
    client.put_secret_value(SecretId=name, SecretString="r" * 32)
    assert m.token(CARD) == mask().token(CARD)  # cached: rotation shows after the ttl
    fresh = Mask({"card": "token"}, key=MaskingKey.from_aws_secrets_manager(client, name, ttl=0))
    assert fresh.token(CARD) == Mask({"card": "token"}, key="r" * 32).token(CARD)


def test_key_from_azure_key_vault_through_its_client() -> None:
    import requests
    import urllib3
    from azure.core.credentials import AccessToken
    from azure.core.pipeline.transport import RequestsTransport
    from azure.keyvault.secrets import SecretClient

    asked: list[str] = []

    class Vault(requests.adapters.BaseAdapter):
        def send(self, request: Any, **kwargs: Any) -> requests.Response:
            asked.append(request.url)
            body = json.dumps(
                {
                    "value": KEY,
                    "id": "https://unit.vault.azure.net/secrets/mask/1",
                    "attributes": {"enabled": True, "created": 1, "updated": 1},
                }
            ).encode()
            response = requests.Response()
            response.status_code = 200
            response.headers["Content-Type"] = "application/json"
            response.raw = urllib3.HTTPResponse(
                body=io.BytesIO(body),
                headers={"Content-Type": "application/json", "Content-Length": str(len(body))},
                status=200,
                preload_content=False,
            )
            response.url = request.url
            response.request = request
            return response

        def close(self) -> None:
            pass

    class Credential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("token", 2**31)

    session = requests.Session()
    session.mount("https://", Vault())
    client = SecretClient(
        "https://unit.vault.azure.net",
        Credential(),  # type: ignore[arg-type]
        transport=RequestsTransport(session=session, use_env_settings=False),
    )
    m = Mask({"card": "token"}, key=MaskingKey.from_azure_key_vault(client, "mask"))
    assert m.token(CARD) == mask().token(CARD) and m.token(EMAIL) == mask().token(EMAIL)
    assert len(asked) == 1 and "/secrets/mask" in asked[0]  # fetched once, then cached


def test_without_its_key_a_mask_withholds_error_text(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONCEFLOW_MASK_KEY", raising=False)
    m = Mask({"card": "token"})

    def leaky(event: Event) -> None:
        raise PermanentError(f"card {event.json()['card']} declined")

    letters = MemorySink()
    pipe = Pipeline(leaky, MemorySink(), MemoryIdempotencyStore(), letters, mask=m)
    result = pipe.run_batch([charge_event(1)])
    (letter,) = letters.values()
    assert result.dead_lettered == ["c1"] and "withheld" in letter["message"]
    assert CARD not in letter["message"] + letter["traceback"]
