"""`mmrec report`: numbers, plots, cards and self-containedness of the page, then the page in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mmrec_gen.cli import main
from mmrec_gen.data.results import read_results, write_results
from mmrec_gen.eval.html_report import ReportConfig, build_report, highlight, hit_curve, render_report, target_rank
from mmrec_gen.eval.report import evaluate_file

N_USERS = 5


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
    """Synthetic data with posters; runs: popularity, and the candidate file's display order ranked with a
    (logged) adapter; explanations of 3 users, one with a hallucinated title."""
    from mmrec_gen.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("report")
    data = generate_synthetic(root / "data", num_users=12, num_items=40, seed=5, min_len=6, max_len=12)
    pop = root / "pop.jsonl"
    assert main(["baseline", "pop", "--data", str(data), "--out", str(pop), "--cache-dir", str(root / "c")]) == 0
    shown = root / "display_order.jsonl"
    rows = read_results(pop)
    write_results(shown, [{**r, "ranking": r["candidates"], "meta": {**r["meta"], "model": "order"}} for r in rows])
    adapter = root / "adapter" / "checkpoint-4"
    adapter.mkdir(parents=True)
    log = [{"step": s, "loss": 3.0 - 0.5 * s} for s in (1, 2, 3, 4)] + [{"step": 4, "train_runtime": 1.0}]
    (adapter / "trainer_state.json").write_text(json.dumps({"log_history": log}))
    Path(f"{shown}.run.json").write_text(json.dumps({"config": {"adapter": str(adapter.parent)}, "complete": True}))

    from mmrec_gen.data.loaders import load_dataset
    from mmrec_gen.data.split import split_dataset

    ds = load_dataset(data)
    split = split_dataset(ds)
    why = []
    for n, r in enumerate(rows[:3]):
        history, _ = split.users[r["user_id"]].history_and_target("test")
        cited = ds.items[history[-1].item_id].title
        top = ds.items[r["ranking"][0]]
        text = f"Because you enjoyed {cited}, you will like {top.title}." + (" Like Zorro <b>!" if n == 1 else "")
        why.append({
            "user_id": r["user_id"], "item_id": top.item_id, "title": top.title, "explanation": text,
            "cited_history": [cited], "cites_history": True, "hallucinated_titles": ["Zorro <b>"] if n == 1 else [],
            "evidence": [{"item_id": history[-1].item_id, "title": cited, "shared": []}], "cited_title": cited,
            "item_genres": [], "error": None, "meta": {**r["meta"], "mode": "explain"},
        })  # fmt: skip
    explanations = root / "why.jsonl"
    write_results(explanations, why)
    return {"root": root, "data": data, "runs": [pop, shown], "explanations": explanations}


def _config(inputs, out) -> ReportConfig:
    return ReportConfig(
        runs=[str(r) for r in inputs["runs"]], data=str(inputs["data"]), out=str(out),
        explanations=str(inputs["explanations"]), users=str(N_USERS),
    )  # fmt: skip


def test_hit_curve_and_ranks_agree_with_the_evaluated_metrics(report_inputs):
    for run in report_inputs["runs"]:
        ranks = [target_rank(r) for r in read_results(run)]
        metrics = evaluate_file(run)
        curve = hit_curve(ranks)
        assert curve[0] == pytest.approx(metrics["hr@1"]) and curve[4] == pytest.approx(metrics["hr@5"])
        assert curve[-1] == pytest.approx(metrics["valid_ratio"])  # 20 candidates: every valid user hits at k = 20
    assert target_rank({"ranking": ["a", "b"], "target": "b", "valid": True, "error": None}) == 2
    assert target_rank({"ranking": ["a", "b"], "target": "b", "valid": False, "error": None}) is None


def test_highlight_marks_cited_and_hallucinated_titles_and_keeps_the_rest():
    text = "Since you loved The Matrix (1999) and Heat, try Zorro."
    segs = highlight(text, ["Matrix, The (1999)", "Heat (1995)"], ["Zorro"])
    assert [(s["text"], s["kind"]) for s in segs if s["kind"]] == [
        ("The Matrix (1999)", "cited"), ("Heat", "cited"), ("Zorro", "hallucinated")
    ]  # fmt: skip
    assert "".join(s["text"] for s in segs) == text
    assert highlight("Heatwave", ["Heat (1995)"]) == [{"text": "Heatwave", "kind": ""}]  # whole words only


def test_the_page_is_self_contained_and_holds_every_part(report_inputs, tmp_path):
    context = build_report(_config(report_inputs, tmp_path / "r.html"))
    html = render_report(context)
    assert len(context["cards"]) == N_USERS and html.count('<section class="card"') == N_USERS
    assert set(context["plots"]) == {"hit_curve", "rank_histogram", "loss"}  # the second run points at an adapter
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    assert "<script" not in html and "http://" not in html and "https://" not in html and "<link" not in html
    assert "Zorro &lt;b&gt;" in html and "<b>" not in html  # data is escaped
    card = context["cards"][0]
    assert sum(it["target"] for it in card["ranking"]) == 1 and len(card["ranking"]) == 20
    assert all(it["src"] for it in card["history"] + card["ranking"])  # every synthetic item has a poster
    pop_rank = target_rank(read_results(report_inputs["runs"][0])[0])
    assert card["ranks"][0] == {"run": "pop.jsonl", "rank": pop_rank}


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("chromium is not installed (`make install` installs Debian's chromium when apt-get can)")
    return path


def _run_chromium(binary: str, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=60)


# Appended to a copy of the page only (the report itself has no script): marks how many images decoded.
_CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.documentElement.dataset.imgsTotal = imgs.length;
  document.documentElement.dataset.imgsBroken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;
});</script>"""


def _dom(binary: str, page: Path) -> str:
    done = _run_chromium(binary, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_renders_in_headless_chromium(report_inputs, tmp_path):
    binary = _chromium()
    out = tmp_path / "report.html"
    assert main(["report", *map(str, report_inputs["runs"]), "--data", str(report_inputs["data"]),
                 "--explanations", str(report_inputs["explanations"]), "--users", str(N_USERS),
                 "--out", str(out)]) == 0  # fmt: skip
    shot = tmp_path / "report.png"
    done = _run_chromium(binary, "--window-size=1280,1800", f"--screenshot={shot}", out.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1280, 1800)
        assert len(im.convert("RGB").getcolors(1 << 24)) > 500  # plots and posters, not a blank or error page

    checked = tmp_path / "checked.html"
    checked.write_text(out.read_text(encoding="utf-8").replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    dom = _dom(binary, checked)
    total = int(re.search(r'data-imgs-total="(\d+)"', dom).group(1))
    # 3 plots + per card: history posters + 20 ranked candidates
    assert total >= 3 + N_USERS * 20
    assert re.search(r'data-imgs-broken="(\d+)"', dom).group(1) == "0"
    assert dom.count('<section class="card"') == N_USERS
    for run in report_inputs["runs"]:
        metrics = evaluate_file(run)
        row = re.search(rf'<tr data-run="{Path(run).name}">(.*?)</tr>', dom, re.S).group(1)
        for key in ("hr@1", "hr@5", "ndcg@10", "mrr"):
            assert f'data-metric="{key}">{metrics[key]:.4f}<' in row
    assert 'data-metric="hallucinated_rate">0.3333<' in dom  # 1 of the 3 explanations

    # The check itself can fail: a page with one undecodable image reports it.
    broken = tmp_path / "broken.html"
    broken.write_text(f'<html><body><img src="data:image/png;base64,AAAA">{_CHECK}</body></html>', encoding="utf-8")
    assert re.search(r'data-imgs-broken="(\d+)"', _dom(binary, broken)).group(1) == "1"


# -- issue 23: malformed or foreign explanation files, and huge titles --


def _report(inputs, tmp_path, explanations, data=None) -> int:
    return main(["report", *map(str, inputs["runs"]), "--data", str(data or inputs["data"]), "--out",
                 str(tmp_path / "r.html"), "--explanations", str(explanations), "--users", "3"])  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("explanation", 123, "'explanation' must be text or null, got int '123'"),
        ("explanation", ["Because", "you"], "'explanation' must be text or null, got list"),
        ("cited_history", "Heat (1995)", "'cited_history' must be a list of titles or null, got str"),
    ],
)
def test_a_malformed_explanation_row_is_named_not_a_traceback(report_inputs, tmp_path, capsys, field, value, message):
    rows = read_results(report_inputs["explanations"])
    rows[1][field] = value
    bad = tmp_path / "why.jsonl"
    write_results(bad, rows)
    assert _report(report_inputs, tmp_path, bad) == 1
    assert f"mmrec report: error: {bad}:2: {message}" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_explanations_of_another_dataset_are_refused_and_another_seed_warned(report_inputs, tmp_path, capsys, caplog):
    rows = read_results(report_inputs["explanations"])
    other = tmp_path / "other.jsonl"
    write_results(other, [{**r, "meta": {**r["meta"], "dataset": "ml-latest-small"}} for r in rows])
    assert _report(report_inputs, tmp_path, other) == 1
    err = capsys.readouterr().err
    assert f"--explanations {other} explains dataset 'ml-latest-small', the runs rank '" in err

    reseeded = tmp_path / "seed7.jsonl"
    write_results(reseeded, [{**r, "meta": {**r["meta"], "seed": 7}} for r in rows])
    assert _report(report_inputs, tmp_path, reseeded) == 0
    assert f"--explanations {reseeded} was made under another protocol than the runs (seed 7 vs 0)" in caplog.text


def test_huge_titles_are_cut_as_prompts_cut_them(report_inputs, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(report_inputs["data"], data)
    first = read_results(report_inputs["runs"][0])[0]
    long_item = first["ranking"][0]
    items = [json.loads(line) for line in (data / "items.jsonl").read_text().splitlines()]
    for item in items:
        if item["item_id"] == long_item:
            item["title"] = "Z" * 100_000
    (data / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    assert _report(report_inputs, tmp_path, report_inputs["explanations"], data=data) == 0
    html = (tmp_path / "r.html").read_text()
    assert "Z" * 300 not in html and html.count("Z" * 299 + "…") >= 4  # tooltip, alt, caption: each cut
    assert len(html) < 1_000_000
