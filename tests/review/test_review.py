"""`imgclf review`: the findings ranked, the page's routes, and the whole loop in a real browser:
relabel with the keyboard, undo, reload (the decisions persist), apply, revert, with the files on
disk checked at each step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import imgclf
from conftest import CHROMIUM, CHROMIUM_FLAGS, served_at, write_class_folders
from imgclf.data.decisions import read_decisions
from imgclf.review.app import create_review_app
from imgclf.review.session import open_review
from imgclf.serve import Access

WRONG = 8  # squares filed as discs


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """Shapes with 8 squares filed as discs and one corrupt file, and a small CNN trained on them.
    Returns (run folder, data folder, the wrong files' keys)."""
    root = tmp_path_factory.mktemp("review")
    data = write_class_folders(root / "data", ["square", "disc", "cross"], 40, size=28, mode="RGB")
    wrong = []
    for index in range(WRONG):
        shutil.move(data / "square" / f"square_{index:03d}.png", data / "disc" / f"square_{index:03d}.png")
        wrong.append(f"disc/square_{index:03d}.png")
    (data / "cross" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMGCLF_CACHE_DIR", str(root / "cache"))
        run = imgclf.train(
            data, model="cnn-small", epochs=4, batch_size=16, image_size=[32, 32], seed=1,
            project=str(root / "runs"), name="noisy",
        )  # fmt: skip
    return run.run_dir, data, wrong


def fresh_copy(data: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    return copy


def test_findings_come_ranked_with_the_wrong_labels_first(noisy, tmp_path: Path) -> None:
    run_dir, data, wrong = noisy
    session = open_review(data, model=run_dir, review=tmp_path / "review.jsonl")
    kinds = [item.kind for item in session.items]
    assert "corrupt" in kinds and "label-issue" in kinds
    assert len({item.id for item in session.items}) == len(session.items)
    worth = [item.worth for item in session.items]
    assert worth == sorted(worth, reverse=True)
    # most of the flipped labels are among the first 2× as many items, with the right suggestion
    first = session.items[: 2 * WRONG + 1]
    found = [item for item in first if item.path in wrong and item.suggestion == "square"]
    assert len(found) >= WRONG * 0.75, [(i.kind, i.path, i.suggestion) for i in first]
    assert session.neighbours(kinds.index("label-issue"))  # nearest training images


def test_new_images_come_after_the_findings_the_least_sure_first(noisy, tmp_path: Path) -> None:
    run_dir, data, _ = noisy
    pool = write_class_folders(tmp_path / "pool", ["square", "disc", "cross"], 6, size=28, mode="RGB", seed=5)
    (pool / "cross" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # skipped
    session = open_review(data, model=run_dir, new=pool, review=tmp_path / "review.jsonl", label_check=False)
    kinds = [item.kind for item in session.items]
    new = [item for item in session.items if item.kind == "new"]
    assert len(new) == 18 and kinds[-18:] == ["new"] * 18  # each readable one once, after the findings
    assert all(item.label is None and item.suggestion in ("square", "disc", "cross") for item in new)
    assert len({item.path for item in new}) == 18 and all(Path(item.path).is_absolute() for item in new)
    sure = [item.score for item in new]  # the model's confidence in its answer, the least sure first
    assert sure[0] <= sure[-1] and all(0.0 <= value <= 1.0 for value in sure)


def test_the_review_page_only_its_user_can_drive(noisy, tmp_path: Path) -> None:
    run_dir, original, _ = noisy
    data = fresh_copy(original, tmp_path)
    session = open_review(data, review=tmp_path / "review.jsonl", label_check=False, model=run_dir)
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    access = Access(token="t0k", loopback_only=True, query_token_changes=False)
    auth = {"Authorization": "Bearer t0k"}
    with TestClient(create_review_app(session, access), base_url="http://127.0.0.1:8010") as client:
        session.decide(0, "exclude")  # a decision waiting to be applied
        form = client.post(
            "/api/apply?token=t0k", headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert form.status_code == 401 and "Authorization: Bearer header" in form.json()["detail"]
        for foreign in (
            {"Origin": "http://evil.example"},
            {"Sec-Fetch-Site": "cross-site"},
            {"Origin": "null"},
        ):
            assert client.post("/api/apply", headers={**auth, **foreign}).status_code == 403, foreign
        assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before  # nothing moved
        assert client.get("/api/items?token=t0k").status_code == 200  # reads (the images) by address
        page = client.get("/")
        assert (
            page.headers["x-frame-options"] == "DENY"
            and "frame-ancestors 'none'" in page.headers["content-security-policy"]
        )
        assert "history.replaceState" in page.text and "sessionStorage" in page.text

        def decide(**body):
            return client.post("/api/decide", json={"item": 0, "action": "relabel", **body}, headers=auth)

        for label in ("../../victim", "/tmp/x", ".hidden", "a/b", "x\u0000y", ""):
            assert decide(label=label, new_class=True).status_code == 400, label
        assert decide(label="zebra").status_code == 400  # not a class: only on purpose
        assert decide(label="zebra", new_class=True).status_code == 200
        assert "zebra" in client.get("/api/items", headers=auth).json()["classes"]
        assert decide(label="zebra").status_code == 200  # created now: one of the classes
    decided = read_decisions(tmp_path / "review.jsonl")
    assert [d.new for d in decided] == [None, "zebra", "zebra"] and [d.new_class for d in decided] == [
        False,
        True,
        True,
    ]


def test_routes_record_every_decision_and_undo(noisy, tmp_path: Path) -> None:
    run_dir, data, _ = noisy
    session = open_review(data, model=run_dir, review=tmp_path / "review.jsonl")
    issue = next(n for n, item in enumerate(session.items) if item.kind == "label-issue")
    with TestClient(create_review_app(session)) as client:
        state = client.get("/api/items").json()
        assert state["classes"] == ["cross", "disc", "square"] and state["explain"]
        image = client.get(f"/api/image/{issue}")
        assert image.status_code == 200 and image.headers["content-type"].startswith("image/")
        heat = client.get(f"/api/heatmap/{issue}")
        assert heat.status_code == 200 and heat.content.startswith(b"\x89PNG")
        assert client.get("/api/image/100000").status_code == 400
        answer = client.post("/api/decide", json={"item": issue, "action": "relabel"})
        assert answer.status_code == 200 and answer.json()["new"] == session.items[issue].suggestion
        client.post("/api/decide", json={"item": issue + 1, "action": "exclude"})
        assert client.post("/api/decide", json={"item": issue, "action": "fly"}).status_code == 400
        assert client.post("/api/undo").json()["undone"] == session.items[issue + 1].id
        state = client.get("/api/items").json()
        assert state["items"][issue]["decision"]["action"] == "relabel"
        assert state["items"][issue + 1]["decision"] is None
    lines = read_decisions(tmp_path / "review.jsonl")
    assert [d.action for d in lines] == ["relabel", "exclude", "undo"]
    assert lines[0].sha256 and lines[0].old == session.items[issue].label
    with TestClient(create_review_app(session, Access(token="secret"))) as client:
        assert client.get("/api/items").status_code == 401
        assert client.get("/api/items", headers={"Authorization": "Bearer secret"}).status_code == 200
        assert client.get("/").status_code == 200  # the page itself; it sends the token it was given


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_the_review_loop_in_chromium(noisy, tmp_path: Path) -> None:
    playwright = pytest.importorskip("playwright.sync_api")
    run_dir, original, _ = noisy
    data = fresh_copy(original, tmp_path)
    review = tmp_path / "review.jsonl"
    session = open_review(data, model=run_dir, review=review)
    first = session.items[0]
    assert first.kind in ("conflicting-labels", "corrupt", "label-issue")
    access = Access(token="page-t0ken", loopback_only=True, query_token_changes=False)  # as `imgclf review`
    with served_at(create_review_app(session, access)) as port, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/?token=page-t0ken")
            page.wait_for_function("document.getElementById('progress').textContent.includes('item 1 of')")
            assert "token" not in page.url  # dropped from the address bar and history; kept by the tab
            labels = [item for item in session.items if item.kind == "label-issue"]
            target = session.items.index(labels[0])
            for _ in range(target):  # to the first likely wrong label
                page.keyboard.press("ArrowRight")
            page.wait_for_function(
                f"document.getElementById('progress').textContent.includes('item {target + 1} of')"
            )
            page.keyboard.press("Enter")  # relabel to the suggestion
            page.wait_for_function("document.getElementById('status').textContent.includes('relabelled')")
            assert [d.action for d in read_decisions(review)] == ["relabel"]
            page.keyboard.press("3")  # the next item: relabel to the third class
            page.wait_for_function("document.getElementById('progress').textContent.includes('2 decided')")
            assert read_decisions(review)[-1].new == "square"
            page.keyboard.press("u")  # undo it
            page.wait_for_function("document.getElementById('status').textContent.includes('undone')")
            assert read_decisions(review)[-1].action == "undo"
            page.reload()  # the decisions persist: they are the server's
            page.wait_for_function("document.getElementById('progress').textContent.includes('1 decided')")
            page.click("#apply")
            page.wait_for_function("document.getElementById('status').textContent.includes('moved')")
            moved = Path(labels[0].path)
            assert (data / labels[0].suggestion / moved.name).is_file()
            assert not (data / labels[0].path).exists()
            page.click("#revert")
            page.wait_for_function("document.getElementById('status').textContent.includes('put back')")
            assert (data / labels[0].path).is_file()
        finally:
            browser.close()
    decided = [json.loads(line) for line in review.read_text().splitlines()]
    assert [d["action"] for d in decided] == ["relabel", "relabel", "undo"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (see .ci/run)")
def test_a_page_of_another_site_cannot_apply_in_chromium(noisy, tmp_path: Path) -> None:
    """A web page the user has open elsewhere posts a form to the review page's /api/apply (with the
    token in its address, as if it had leaked): the browser sends it, the review page refuses it,
    and no file moves."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    playwright = pytest.importorskip("playwright.sync_api")
    run_dir, original, _ = noisy
    data = fresh_copy(original, tmp_path)
    session = open_review(data, model=run_dir, review=tmp_path / "review.jsonl", label_check=False)
    session.decide(0, "exclude")
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*"))
    access = Access(token="page-t0ken", loopback_only=True, query_token_changes=False)
    evil = FastAPI()
    with served_at(create_review_app(session, access)) as port:

        @evil.get("/", response_class=HTMLResponse)
        def attack() -> str:
            target = f"http://127.0.0.1:{port}/api/apply?token=page-t0ken"
            return f'<form id="f" method="post" action="{target}"></form><script>f.submit()</script>'

        with served_at(evil) as evil_port, playwright.sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
            try:
                page = browser.new_page()
                with page.expect_response(lambda r: "/api/apply" in r.url) as answer:
                    page.goto(f"http://localhost:{evil_port}/")  # another origin than 127.0.0.1:{port}
                assert answer.value.status == 403, answer.value.text()
            finally:
                browser.close()
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("*")) == before
    assert not (data / ".imgclf-review").exists()


def test_the_cli_applies_reverts_updates_and_trains_with_the_overlay(
    noisy, tmp_path: Path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from imgclf.cli import app
    from imgclf.data.decisions import Decision, DecisionLog, file_digest

    run_dir, original, wrong = noisy
    data = fresh_copy(original, tmp_path)
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    log = DecisionLog(tmp_path / "review.jsonl")
    for path in wrong:
        log.append(
            Decision(
                f"label-issue:{path}",
                "relabel",
                path,
                file_digest(data / path),
                "label-issue",
                "disc",
                "square",
            )
        )
    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)

    result = invoke("update", run_dir, "--review", log.path, "--name", "fixed")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "8 labels changed: 8 relabelled" in text and "on the same corrected validation split" in text
    assert "val_acc" in text and (run_dir.parent / "fixed" / "model" / "imgclf.json").is_file()
    result = invoke("review", data, "--out", log.path, "--apply")
    assert result.exit_code == 0 and "moved 8 files" in result.output
    assert all((data / "square" / Path(path).name).is_file() for path in wrong)
    result = invoke("review", data, "--revert")
    assert result.exit_code == 0 and "put back 8 files" in result.output
    assert all((data / path).is_file() for path in wrong)
    run = imgclf.train(data, review=str(log.path), model="cnn-small", epochs=1, batch_size=16,
                       image_size=[32, 32], project=str(tmp_path / "runs"), name="overlay")  # fmt: skip
    manifest = (run.run_dir / "manifest.csv").read_text()
    assert all(f"{path},square," in manifest for path in wrong)  # the files stay; their labels change
    assert "review.jsonl" in (run.run_dir / "config.yaml").read_text()
