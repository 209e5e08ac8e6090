"""Paraphrase cache: a real HTTP endpoint on 127.0.0.1 (canned replies, a failure then a retry, malformed replies),
resumption without duplicates or losses, and a local Hugging Face generator."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from scripts import paraphrase_refs as P
from tests.qg_fixtures import write_qg_squad

CONFIG = {
    "num_paraphrases": 3,
    "min_paraphrases": 3,
    "temperature": 0.7,
    "seed": 0,
    "prompt_id": "test-v1",
    "prompt": "Give {n} rewordings of: {question} (answer: {answer})",
    "filters": {"drop_duplicates": True, "drop_equal_to_reference": True},
}


class Endpoint:
    """A chat-completions server whose replies come from a queue (status, body); records every request."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, str]] = []
        self.requests: list[dict] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(
                    {"path": self.path, "auth": self.headers.get("Authorization"), **body}
                )
                status, text = endpoint.replies.pop(0) if endpoint.replies else (200, endpoint.echo(body))
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def echo(body: dict) -> str:
        """A well-formed reply: three numbered rewordings of the question in the prompt, plus a duplicate."""
        q = body["messages"][0]["content"].split("of: ")[1].split(" (answer")[0]
        text = f"1. {q} (a)\n2. {q} (b)\n3. {q} (b)\n- {q} (c)"
        return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})


@pytest.fixture
def endpoint():
    ep = Endpoint()
    yield ep
    ep.server.shutdown()
    ep.server.server_close()


def generator(endpoint, **kw):
    kw = {"api_key_env": "QG_TEST_KEY", "max_retries": 2, "backoff_s": 0.01, "sleep": lambda s: None, **kw}
    gen = P.OpenAIChatGenerator(endpoint.url, "tiny-chat", **kw)
    meta = {"type": "openai", "model": "tiny-chat", "prompt_id": "test-v1", "temperature": 0.7, "seed": 0}
    return gen, meta


def items(n=4):
    return [
        {"item_id": f"test-{i}", "reference": f"Question number {i}?", "answer": str(i)} for i in range(n)
    ]


def test_cache_over_real_http_with_a_failure_then_a_retry(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("QG_TEST_KEY", "sekrit")
    endpoint.replies = [(503, '{"error": "overloaded"}')]  # the first call fails, its retry succeeds
    gen, meta = generator(endpoint)
    out = tmp_path / "cache.jsonl"
    counts = P.generate_cache(items(2), CONFIG, out, gen, meta)
    assert counts == {"done": 2, "skipped": 0, "total": 2}
    assert len(endpoint.requests) == 3  # 1 failure + 1 retry + 1 for the second item
    first = endpoint.requests[0]
    assert first["path"] == "/v1/chat/completions" and first["auth"] == "Bearer sekrit"
    assert first["model"] == "tiny-chat" and first["temperature"] == 0.7
    assert "Question number 0?" in first["messages"][0]["content"]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["item_id"] for r in records] == ["test-0", "test-1"]
    # numbering stripped; 3 asked for, the duplicate "(b)" dropped by the filter and counted
    assert records[0]["paraphrases"] == ["Question number 0? (a)", "Question number 0? (b)"]
    assert records[0]["dropped"] == 1 and records[0]["generator"] == meta


def test_gives_up_after_max_retries_and_refuses_client_errors(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("QG_TEST_KEY", "k")
    endpoint.replies = [(500, "x")] * 3
    gen, meta = generator(endpoint)
    with pytest.raises(P.ParaphraseError, match="failed after 3 tries.*HTTP 500"):
        gen("prompt", where="item a")
    endpoint.replies = [(401, '{"error": "bad key"}')]
    with pytest.raises(P.ParaphraseError, match="refused the request: HTTP 401"):
        gen("prompt", where="item b")
    assert len(endpoint.requests) == 4  # 401 is not retried
    monkeypatch.delenv("QG_TEST_KEY")
    with pytest.raises(P.ParaphraseError, match="QG_TEST_KEY is not set"):
        generator(endpoint)


@pytest.mark.parametrize(
    "reply, message",
    [
        ("<html>oops</html>", "not JSON"),
        ('{"result": "no choices"}', r"no choices\[0\]\.message\.content"),
        ('{"choices": [{"message": {"content": null}}]}', "not text"),
        ('{"choices": [{"message": {"content": "only one line"}}]}', "expected at least 3 paraphrases"),
    ],
)
def test_malformed_replies_give_clear_errors(endpoint, tmp_path, monkeypatch, reply, message):
    monkeypatch.setenv("QG_TEST_KEY", "k")
    endpoint.replies = [(200, reply)]
    gen, meta = generator(endpoint)
    out = tmp_path / "cache.jsonl"
    with pytest.raises(P.ReplyFormatError, match=message) as info:
        P.generate_cache(items(1), CONFIG, out, gen, meta)
    assert "item test-0" in str(info.value)
    assert out.read_text() == ""  # nothing half-written


def test_resume_neither_duplicates_nor_loses_items(endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("QG_TEST_KEY", "k")
    gen, meta = generator(endpoint, max_retries=0)
    out = tmp_path / "cache.jsonl"
    # a first run dies at the third item (endpoint down)
    endpoint.replies = [
        (200, Endpoint.echo({"messages": [{"content": f"of: Question number {i}? (answer"}]}))
        for i in range(2)
    ] + [(500, "down")]
    with pytest.raises(P.ParaphraseError):
        P.generate_cache(items(5), CONFIG, out, gen, meta)
    assert len(out.read_text().splitlines()) == 2
    # simulate a crash in the middle of writing a fourth line
    with out.open("a") as fh:
        fh.write('{"item_id": "test-2", "reference": "Quest')
    n_before = len(endpoint.requests)
    counts = P.generate_cache(items(5), CONFIG, out, gen, meta)
    assert counts == {"done": 3, "skipped": 2, "total": 5}
    assert len(endpoint.requests) - n_before == 3  # only the missing items were asked for
    ids = [json.loads(line)["item_id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"test-{i}" for i in range(5)] and len(ids) == 5
    # a third run has nothing to do
    assert P.generate_cache(items(5), CONFIG, out, gen, meta)["done"] == 0
    # a cache made with another generator/prompt is refused rather than mixed
    with pytest.raises(P.ParaphraseError, match="different|not"):
        P.generate_cache(items(5), CONFIG, out, gen, {**meta, "prompt_id": "other"})
    # a corrupt line in the middle is an error, not silently dropped
    lines = out.read_text().splitlines()
    out.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match="corrupt"):
        P.generate_cache(items(5), CONFIG, out, gen, meta)


def test_command_line_on_a_qg_split_through_http(endpoint, tmp_path, monkeypatch):
    root = write_qg_squad(tmp_path / "qg")
    monkeypatch.setenv("QG_TEST_KEY", "k")
    config = {
        **CONFIG,
        "generator": {
            "type": "openai",
            "base_url": endpoint.url,
            "model": "tiny-chat",
            "api_key_env": "QG_TEST_KEY",
            "backoff_s": 0.01,
        },
    }
    cfg = tmp_path / "para.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "para.jsonl"
    counts = P.main(["-c", str(cfg), "--qg-root", str(root), "--split", "test", "--output", str(out)])
    assert counts["done"] == 6
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs[0]["item_id"] == "test-0" and recs[0]["reference"] == "When was the king built?"
    assert "(answer: " in endpoint.requests[0]["messages"][0]["content"]


def test_local_hf_generator_samples_n_strings(tmp_path):
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    from lightning_modules.qg.metrics import PACKAGED_MINILM, resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(PACKAGED_MINILM))
    config = AutoConfig.for_model(
        "t5",
        vocab_size=len(tok),
        d_model=16,
        d_ff=32,
        d_kv=4,
        num_heads=2,
        num_layers=1,
        num_decoder_layers=1,
        pad_token_id=0,
        eos_token_id=tok.sep_token_id,
        decoder_start_token_id=0,
    )
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    gen = P.HFGenerator(str(tmp_path / "t5"), kind="seq2seq", max_new_tokens=6)
    out = gen("rewrite : when was it built ?", 3)
    assert len(out) == 3 and all(isinstance(x, str) for x in out)
    with pytest.raises(P.ParaphraseError, match="seq2seq or causal"):
        P.HFGenerator(str(tmp_path / "t5"), kind="encoder")
