"""python -m bitttt.serve: the OpenAI API driven by the real `openai` client against a real
server on loopback (uvicorn in a thread on a free port; one test runs the CLI in a subprocess).

The shipped model (a real tokenizer, about 1,000 tokens/s here) answers; greedy decoding makes
every text comparable."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from serve_util import ServerThread, metric, wait_for  # noqa: E402

import bitttt  # noqa: E402
from bitttt.infer import SHIPPED_MODEL  # noqa: E402
from bitttt.serve import create_app  # noqa: E402

GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def model():
    return bitttt.load(SHIPPED_MODEL)


@pytest.fixture(scope="module")
def server(model):
    with ServerThread(create_app(model, name="tiny", parallel=8)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def _chat_ids(tok, messages):
    sp = tok.special_ids
    ids = []
    for role, text in messages:
        ids += [sp[f"<|{role}|>"]] + tok.encode(text)
    return ids + [sp["<|assistant|>"]]


def _msgs(pairs):
    return [{"role": r, "content": t} for r, t in pairs]


# -- plain routes ---------------------------------------------------------------------------
def test_health_models_tokenize_and_error_shapes(server, client, model):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    text = "Tom has a red ball."
    r = httpx.post(server.url + "/tokenize", json={"content": text}).json()
    assert r["tokens"] == model.tokenizer.encode(text)
    assert httpx.post(server.url + "/detokenize", json={"tokens": r["tokens"]}).json() == {"content": text}
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10 ** 6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405


# -- generation -----------------------------------------------------------------------------
def test_chat_and_completion_usage(client, model):
    tok = model.tokenizer
    q = "Tell me a story about a dog."
    r = client.chat.completions.create(model="tiny", messages=_msgs([("user", q)]), max_tokens=12,
                                       extra_body={"ignore_eos": True, "session_id": "usage-chat"}, **GREEDY)
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(_chat_ids(tok, [("user", q)]))
    assert r.usage.completion_tokens == 12 and r.usage.total_tokens == r.usage.prompt_tokens + 12
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.choices[0].message.content
    p = "Once upon a time, there was a little"
    c = client.completions.create(model="tiny", prompt=p, max_tokens=9, extra_body={"ignore_eos": True}, **GREEDY)
    assert c.object == "text_completion" and c.choices[0].finish_reason == "length"
    assert c.usage.prompt_tokens == len(tok.encode(p)) and c.usage.completion_tokens == 9
    # the same text as the library's own generation from a fresh state
    want = model.generate(p, max_tokens=9, temperature=0)
    assert c.choices[0].text == want


def test_long_prompt_read_in_chunks_and_chat_roles(client, model):
    """A prompt longer than the prefill chunk (512 tokens) is read in pieces between decode
    rounds: the same text as the library reading it at once."""
    p = "Once upon a time there was a little girl who liked to play in the park with her dog. " * 40
    assert len(model.tokenizer.encode(p)) > 600
    r = client.completions.create(model="anything", prompt=p, max_tokens=8, **GREEDY)
    assert r.choices[0].text == model.generate(p, max_tokens=8, temperature=0)
    msgs = [("system", "You tell short stories."), ("user", "A story about a fox.")]
    r = client.chat.completions.create(model="tiny", messages=[{"role": "developer", "content": msgs[0][1]},
                                                                {"role": "user", "content": msgs[1][1]}],
                                       max_completion_tokens=5, **GREEDY)
    assert r.usage.prompt_tokens == len(_chat_ids(model.tokenizer, msgs)) and r.usage.completion_tokens <= 5


def test_streaming_equals_non_streaming(client):
    msgs = _msgs([("user", "Once there was a cat who liked fish.")])
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=30, **GREEDY)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=30, stream=True,
                                                 stream_options={"include_usage": True}, **GREEDY))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens
    s = list(client.completions.create(model="tiny", prompt="The sun was", max_tokens=15, stream=True, **GREEDY))
    one = client.completions.create(model="tiny", prompt="The sun was", max_tokens=15, **GREEDY)
    assert "".join(c.choices[0].text for c in s) == one.choices[0].text


def test_stop_strings(client):
    p = "One day, a little girl named Lily"
    base = client.completions.create(model="tiny", prompt=p, max_tokens=40, extra_body={"ignore_eos": True},
                                     **GREEDY).choices[0].text
    words = base.split()
    stop = " " + words[len(words) // 2]
    cut = base[: base.find(stop)]
    for stream in (False, True):
        r = client.completions.create(model="tiny", prompt=p, max_tokens=40, stop=[stop, "@@never@@"], stream=stream,
                                      **GREEDY)
        if stream:
            parts = list(r)
            text, fin = "".join(c.choices[0].text for c in parts), parts[-1].choices[0].finish_reason
        else:
            text, fin = r.choices[0].text, r.choices[0].finish_reason
        assert text == cut and fin == "stop"


def test_seed_reproduces_text(client):
    kw = dict(model="tiny", prompt="The dog ran to the", max_tokens=25, temperature=1.0,
              extra_body={"top_k": 0, "min_p": 0.0, "ignore_eos": True})
    a = client.completions.create(seed=11, **kw).choices[0].text
    b = client.completions.create(seed=11, **kw).choices[0].text
    others = {client.completions.create(seed=s, **kw).choices[0].text for s in (12, 13, 14)}
    assert a == b
    assert others - {a}  # other seeds draw other texts


def test_bad_parameters_give_400_in_openai_shape(server, client):
    before = httpx.get(server.url + "/v1/sessions").json()["data"]
    msgs = _msgs([("user", "hi")])
    cases = [(dict(temperature=5), "temperature"), (dict(top_p=0), "top_p"), (dict(n=2), "n"),
             (dict(max_tokens=0), "max_tokens"), (dict(extra_body={"top_k": -1}), "top_k"),
             (dict(extra_body={"session_id": "../etc"}), "session_id"), (dict(logprobs=True), "logprobs"),
             (dict(stop=[1, 2]), "stop"), (dict(logit_bias={"5": 10}), "logit_bias"),
             (dict(response_format={"type": "json_object"}), "response_format"),
             (dict(presence_penalty=0.5), "presence_penalty"),
             (dict(max_completion_tokens=-3), "max_completion_tokens")]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=msgs, **kw)
        assert e.value.status_code == 400
        assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error", kw
        assert e.value.body["message"]
    for messages, param in (([], "messages"), ([{"role": "robot", "content": "x"}], "messages[0].role"),
                            ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content")):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=messages)
        assert e.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=[5, 10 ** 7])
    assert e.value.body["param"] == "prompt"
    after = httpx.get(server.url + "/v1/sessions").json()["data"]
    assert len(after) == len(before)  # refused requests made no session


# -- sessions ---------------------------------------------------------------------------------
def _turn(client, sid, history, max_tokens=16, **extra):
    body = {"session_id": sid} if sid else {}
    r = client.chat.completions.create(model="tiny", messages=_msgs(history), max_tokens=max_tokens,
                                       extra_body={**body, **extra}, **GREEDY)
    return r, r.choices[0].message.content


QS = ["Tell me about a boy named Tom.", "What did Tom find in the park?", "Was he happy at the end?"]


def test_session_three_turns_feed_only_new_tokens(client, model):
    tok = model.tokenizer
    hist, prev, prev_fin = [], None, None
    for i, q in enumerate(QS):
        hist.append(("user", q))
        r, text = _turn(client, "alice", hist)
        u = r.usage
        if prev is None:
            assert u.prompt_tokens_details.cached_tokens == 0
        else:
            # everything read before is cached: the last prompt and all but the last generated token
            assert u.prompt_tokens_details.cached_tokens == prev.prompt_tokens + prev.completion_tokens - 1
            new = 1 + len(tok.encode(q)) + 1 + (1 if prev_fin == "length" else 0)
            assert u.prompt_tokens - u.prompt_tokens_details.cached_tokens == new
        if i == 0:
            assert u.prompt_tokens == len(_chat_ids(tok, hist))
        prev, prev_fin = u, r.choices[0].finish_reason
        hist.append(("assistant", text))
    # a fresh session reading the whole history at once answers the third turn the same way
    r_all, text_all = _turn(client, "alice-at-once", hist[:-1])
    assert r_all.usage.prompt_tokens_details.cached_tokens == 0
    assert text_all == hist[-1][1]


def test_edited_and_regenerated_turns_restore_earlier_state(client):
    h1 = [("user", "Tell me about a girl named Sue.")]
    r1, a1 = _turn(client, "carol", h1)
    h2 = h1 + [("assistant", a1), ("user", "What did Sue eat?")]
    r2, a2 = _turn(client, "carol", h2)
    after_reply1 = r1.usage.prompt_tokens + r1.usage.completion_tokens - 1
    assert r2.usage.prompt_tokens_details.cached_tokens == after_reply1
    # edit the second question: back to the state after the first reply, not further
    h2e = h1 + [("assistant", a1), ("user", "Where did Sue go?")]
    r2e, a2e = _turn(client, "carol", h2e)
    assert r2e.usage.prompt_tokens_details.cached_tokens == after_reply1
    _, fresh = _turn(client, "carol-fresh", h2e)
    assert a2e == fresh
    # regenerate the first answer: the state right after the first prompt, nothing fed
    rr, again = _turn(client, "carol", h1)
    assert rr.usage.prompt_tokens_details.cached_tokens == rr.usage.prompt_tokens
    assert again == a1
    # without a name the history is matched against live sessions (and forked, the original kept)
    u1, b1 = _turn(client, None, [("user", "A bird sat on a tree.")])
    u2, _ = _turn(client, None, [("user", "A bird sat on a tree."), ("assistant", b1), ("user", "Then?")])
    assert u2.usage.prompt_tokens_details.cached_tokens == u1.usage.prompt_tokens + u1.usage.completion_tokens - 1
    assert u2.model_extra["session_id"] == u1.model_extra["session_id"]


def test_x_session_id_header(server):
    c = server.client(default_headers={"X-Session-Id": "hdr"})
    r = c.chat.completions.create(model="tiny", messages=_msgs([("user", "Hello there.")]), max_tokens=4)
    assert r.model_extra["session_id"] == "hdr"
    rows = {row["id"]: row for row in httpx.get(server.url + "/v1/sessions").json()["data"]}
    assert rows["hdr"]["named"] and rows["hdr"]["history_tokens"] == r.usage.prompt_tokens + \
        r.usage.completion_tokens - 1
    one = httpx.get(server.url + "/v1/sessions/hdr").json()
    assert one["id"] == "hdr" and one["tokens_read"] == rows["hdr"]["history_tokens"] and one["live"]
    assert httpx.get(server.url + "/v1/sessions/nobody").status_code == 404


@pytest.mark.parametrize("decode", ["batched", "auto"])
def test_eight_concurrent_streams_equal_alone(model, decode):
    """Alone, a stream decodes with the fused one-token step; eight at once share batched steps
    (`batched`: always one BitLlama.step_batch; `auto`: whichever is faster here)."""
    with ServerThread(create_app(model, name="tiny", parallel=8, decode=decode)) as server:
        _eight(server, server.client(), decode)


def _eight(server, client, decode):
    prompts = [f"Once upon a time there was a {w}" for w in
               ("cat", "dog", "bird", "king", "girl", "boy", "fish", "tree")]
    kw = dict(model="tiny", max_tokens=64, stream=True, **GREEDY)  # long enough for the eight to overlap

    def run(i, tag):
        s = client.completions.create(prompt=prompts[i], extra_body={"session_id": f"{tag}-{i}", "ignore_eos": True},
                                      **kw)
        return "".join(c.choices[0].text for c in s)

    alone = [run(i, "solo") for i in range(8)]
    got, barrier = [None] * 8, threading.Barrier(8)

    def worker(i):
        barrier.wait()
        got[i] = run(i, "many")

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert got == alone
    m = httpx.get(server.url + "/metrics").text
    assert metric(m, "bitttt_decode_batch_size_max") >= 2  # the streams did share decode steps
    if decode == "batched":
        assert metric(m, "bitttt_decode_steps_batched_total") >= 1


def test_metrics_text(server, client):
    client.completions.create(model="tiny", prompt="Hi", max_tokens=3)
    m = httpx.get(server.url + "/metrics").text
    assert "# TYPE bitttt_requests_total counter" in m
    assert 'bitttt_requests_total{endpoint="/v1/completions",status="200"}' in m
    for name in ("bitttt_completion_tokens_total", "bitttt_decode_tokens_per_second", "bitttt_sessions_live",
                 "bitttt_requests_queued", "bitttt_requests_active"):
        assert metric(m, name) >= 0
    assert metric(m, "bitttt_completion_tokens_total") >= 3


# -- separate servers -----------------------------------------------------------------------
def test_api_key_refused_and_accepted(model):
    with ServerThread(create_app(model, name="tiny", api_keys=("sekret",))) as s:
        with pytest.raises(openai.AuthenticationError) as e:
            s.client("wrong").chat.completions.create(model="tiny", messages=_msgs([("user", "hi")]), max_tokens=2)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert httpx.get(s.url + "/v1/models").status_code == 401
        assert httpx.get(s.url + "/metrics").status_code == 401
        assert httpx.get(s.url + "/health").status_code == 200  # health stays open
        r = s.client("sekret").chat.completions.create(model="tiny", messages=_msgs([("user", "hi")]), max_tokens=2)
        assert r.usage.completion_tokens >= 1
        assert httpx.get(s.url + "/v1/models", headers={"Authorization": "Bearer sekret"}).status_code == 200


def test_disconnect_frees_its_slot(model):
    with ServerThread(create_app(model, name="tiny", parallel=1)) as s:
        c = s.client()
        stream = c.completions.create(model="tiny", prompt="Once", max_tokens=1_000_000, stream=True,
                                      extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()  # the client goes away with the generation far from done

        def freed():
            m = httpx.get(s.url + "/metrics").text
            return metric(m, "bitttt_requests_active") == 0 and metric(m, "bitttt_requests_cancelled_total") == 1

        assert wait_for(freed, 20)
        t0 = time.monotonic()
        r = c.completions.create(model="tiny", prompt="The end", max_tokens=5)  # the only slot is free again
        assert r.usage.completion_tokens >= 1 and time.monotonic() - t0 < 20
        # a client of a non-streaming request that gives up is noticed too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(s.url + "/v1/completions", json={"prompt": "Once", "max_tokens": 1_000_000,
                                                        "ignore_eos": True}, timeout=1.0)

        def freed_again():
            m = httpx.get(s.url + "/metrics").text
            return metric(m, "bitttt_requests_active") == 0 and metric(m, "bitttt_requests_cancelled_total") == 2

        assert wait_for(freed_again, 20)


def test_health_503_while_loading(model):
    go = threading.Event()

    def loader():
        go.wait(20)
        return model

    with ServerThread(create_app(loader=loader, name="tiny")) as s:
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        assert httpx.post(s.url + "/v1/completions", json={"prompt": "x"}).status_code == 503
        go.set()
        assert wait_for(lambda: httpx.get(s.url + "/health").status_code == 200, 20)


def test_sessions_spill_to_files_and_actions(model, tmp_path):
    d = tmp_path / "sessions"
    # a budget of one byte: every idle session leaves RAM for its memory file at once
    with ServerThread(create_app(model, name="tiny", sessions_dir=str(d), budget_bytes=1)) as s:
        c = s.client()
        h = [("user", QS[0])]
        r1, a1 = _turn(c, "spill", h)
        assert (d / "spill.mem.safetensors").exists()
        rows = {row["id"]: row for row in httpx.get(s.url + "/v1/sessions").json()["data"]}
        assert rows["spill"]["live"] is False
        h += [("assistant", a1), ("user", QS[1])]
        r2, a2 = _turn(c, "spill", h)  # read back from its file, continued in place
        assert r2.usage.prompt_tokens_details.cached_tokens == r1.usage.prompt_tokens + r1.usage.completion_tokens - 1
        _, fresh = _turn(c, "spill-fresh", h)
        assert a2 == fresh
        # the file is an ordinary memory file of this model
        st = model.im.load_memory(str(d / "spill.mem.safetensors"))
        assert st.n_tokens == r2.usage.prompt_tokens + r2.usage.completion_tokens - 1

        def act(sid, action):
            return httpx.post(f"{s.url}/v1/sessions/{sid}", json={"action": action})

        assert act("spill", "save").json()["path"].endswith("spill.mem.safetensors")
        r = act("spill", "restore")
        assert r.status_code == 200 and r.json()["session"]["history_tokens"] == st.n_tokens
        slept = act("spill", "sleep").json()
        assert slept["replayed_tokens"] > 0 and slept["session"]["history_tokens"] == 0
        assert model.im.load_memory(str(d / "spill.mem.safetensors")).n_tokens == st.n_tokens + \
            slept["replayed_tokens"]
        assert act("spill", "erase").json()["erased"] is True
        assert not (d / "spill.mem.safetensors").exists()
        assert act("spill", "erase").status_code == 404
        assert act("spill", "restore").status_code == 404
        bad = act("spill", "fly")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "action"
        assert act(".hidden", "save").status_code == 400
    # a new server finds the spilled sessions in the folder
    with ServerThread(create_app(model, name="tiny", sessions_dir=str(d))) as s:
        rows = {row["id"]: row for row in httpx.get(s.url + "/v1/sessions").json()["data"]}
        assert "spill-fresh" in rows and rows["spill-fresh"]["live"] is False


def test_session_actions_need_a_folder(server):
    r = httpx.post(server.url + "/v1/sessions/alice", json={"action": "save"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "no_sessions_dir"


# -- the command line -----------------------------------------------------------------------
def test_cli_serves_the_shipped_model(tmp_path):
    import socket

    with socket.socket() as so:
        so.bind(("127.0.0.1", 0))
        port = so.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    keyfile = tmp_path / "keys"
    keyfile.write_text("# keys\nk1\nk2\n")
    p = subprocess.Popen([sys.executable, "-m", "bitttt.serve", "--port", str(port), "--api-key-file", str(keyfile),
                          "-t", "1", "--parallel", "2", "--log-level", "warning"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(up, 60, 0.2), p.stderr.read() if p.poll() is not None else "no answer"
        c = openai.OpenAI(base_url=url + "/v1", api_key="k2", max_retries=0, timeout=60)
        assert c.models.list().data[0].id == "tinystories-ternary"
        r = c.chat.completions.create(model="tinystories-ternary", messages=_msgs([("user", "Hi")]), max_tokens=5)
        assert r.usage.completion_tokens >= 1
    finally:
        p.terminate()
        p.wait(15)
    bad = subprocess.run([sys.executable, "-m", "bitttt.serve", "--parallel", "0"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--parallel must be >= 1" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "bitttt.serve", "-m", str(tmp_path / "none.safetensors")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such model" in bad.stderr
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    bad = subprocess.run([sys.executable, "-m", "bitttt.serve", "-m", str(broken), "--port", str(port)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and "broken.safetensors" in bad.stderr  # loading failed: the server stops, says why


def test_loopback_hosts():
    from bitttt.serve.__main__ import _loopback

    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("192.168.1.4")


def test_json_of_every_event_is_openai_shaped(server):
    """Raw SSE: data lines of JSON, ending with data: [DONE]."""
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "stream": True}) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        assert ln.startswith("data: ")
        d = json.loads(ln[6:])
        assert d["object"] == "chat.completion.chunk" and d["id"].startswith("chatcmpl-")
