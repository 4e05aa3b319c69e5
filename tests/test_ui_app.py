"""The app's structure and its hostile-input guards, driven through Streamlit's AppTest: state
declared in one table, one current layer for every page, the sidebar drawn once, runs kept in
the run store, typed numbers never silently coerced, user text never rendered as markup."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest
import torch

from obsviz import Geometry, prune
from obsviz import layers as L

from apptest import ROOT, errors, fresh_store, open_app, plain, run_methods
from ui import runs, state

# ---- helpers ----------------------------------------------------------------------------------


def upload(at, name: str, data: bytes):
    at.file_uploader(key="_p_upload").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    return at


def toy_file(tmp_path: Path, name: str = "toy") -> bytes:
    layer = dataclasses.replace(L.load_sample_layer("toy"), name=name)
    path = tmp_path / "layer.safetensors"
    L.save_layers(path, [layer])
    return path.read_bytes()


def every_markdown(at) -> list[str]:
    """The markdown source of everything the page (and the sidebar) renders as markdown."""
    kinds = ("markdown", "caption", "error", "warning", "info", "success", "subheader", "title")
    return [e.value for kind in kinds for e in at.get(kind)] + \
        [e.value for kind in kinds for e in at.sidebar.get(kind)]


# ---- state declared, one owner per key ---------------------------------------------------------


def test_every_session_key_the_pages_write_is_declared():
    at = open_app("pages/prune.py", state={"layer_name": "toy"})
    run_methods(at, ["local"])
    for page in ("pages/geometry.py", "pages/compare.py", "pages/learn.py", "pages/model.py",
                 "pages/sweep.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
    keys = [k for k in at.session_state._state._state if not k.startswith("$$")]  # noqa: SLF001
    undeclared = [k for k in keys if k not in state.KEYS
                  and not any(k.startswith(p) for p in state.WIDGET_PREFIXES)]
    assert not undeclared, undeclared
    assert all(key.owner and key.holds for key in state.KEYS.values())


def test_the_sidebar_is_drawn_once_on_every_page_by_the_entrypoint():
    at = open_app()
    names = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    assert names == ["compare.py", "geometry.py", "learn.py", "model.py", "prune.py",
                     "sensitivity.py", "sweep.py"]
    for page in ("pages/geometry.py", "pages/prune.py", "pages/compare.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        devices = [s for s in at.sidebar.selectbox if s.label == "Device"]
        layers_ = [s for s in at.sidebar.selectbox if s.label == "Layer"]
        assert len(devices) == 1 and len(layers_) == 1, page
    source = "\n".join((ROOT / "pages" / name).read_text() for name in names)
    assert "state.sidebar()" not in source and "init_state()" not in source
    for name in names:   # each goes through app.py first
        code = [line for line in (ROOT / "pages" / name).read_text().splitlines()
                if line.startswith(("state.", "st."))]
        assert code[0] == "state.require_entrypoint()", name


def test_the_geometry_budget_travels_beside_a_cached_geometry_never_on_it():
    at = open_app("pages/geometry.py", params={"pattern": "2:4", "weight": "64, 128",
                                               "nnz": "1"})
    key = state.spec_key(at.session_state["geometry_form"].spec())
    geom, nnz, _ = state._resolve(key, None)     # the cached pair every session shares
    assert nnz == 1 and geom.nnz == 2           # the user's budget beside; the preset's on it
    assert {m.label: m.value for m in at.metric}["Sparsity"] == "75.0%"


# ---- one current layer ------------------------------------------------------------------------


def test_an_uploaded_layer_is_the_current_layer_of_every_page_and_survives_leaving(tmp_path):
    at = open_app("pages/prune.py", state={"layer_source": "upload"})
    upload(at, "mine.safetensors", toy_file(tmp_path))
    assert at.session_state["user_layer"].label == "mine.safetensors · toy"
    sidebar = [plain(c.value) for c in at.sidebar.caption]
    assert any("mine.safetensors · toy** · W 8 × 16" in c for c in sidebar), sidebar

    at.switch_page("pages/geometry.py").run()       # Geometry shows its shape
    assert not at.exception, at.exception
    assert at.toggle(key="_g_use_layer").label == "Shape of the current layer (8 × 16)"
    assert any("mine.safetensors · toy: W 8 × 16" in plain(c.value) for c in at.caption), \
        [plain(c.value) for c in at.caption]

    at.switch_page("pages/compare.py").run()
    at.switch_page("pages/prune.py").run()          # the uploader is empty again, the layer stays
    assert not at.exception, at.exception
    assert at.session_state["user_layer"].label == "mine.safetensors · toy"
    assert any("In use: **mine.safetensors · toy**" in plain(c.value) for c in at.caption)
    assert any(b.label == "Run" for b in at.button)

    at.sidebar.selectbox(key="_w_layer").set_value("toy").run()   # one choice
    assert at.session_state["layer_source"] == "sample"
    assert at.sidebar.selectbox(key="_w_layer").options[-1] == "mine.safetensors · toy"


def test_the_latest_run_names_its_layer_after_the_layer_is_switched():
    at = run_methods(open_app("pages/prune.py", state={"layer_name": "toy"}), ["local"])
    at.sidebar.selectbox(key="_w_layer").set_value("layer0.query").run()
    assert not at.exception, at.exception
    shown = [plain(m.value) for m in at.markdown]
    assert "On **toy**" in shown, shown


# ---- the run store: nothing a user ran disappears -----------------------------------------------


def test_results_survive_a_restart_through_the_run_store():
    store = fresh_store()
    first = run_methods(open_app("pages/prune.py", state={"layer_name": "toy"}, store=store),
                        ["local", "sparsegpt"])
    done = {r.key: r.result.rel_error for r in first.session_state["results"].values()}
    assert len(done) == 2 and all(r.stored_id for r in first.session_state["results"].values())

    again = open_app("pages/prune.py", state={"layer_name": "toy"}, store=store)  # new session
    run_methods(again, ["local", "sparsegpt"])      # instant: read back from the store
    assert [e["status"] for e in again.session_state["last_run"]] == ["cached", "cached"]
    for key, run in again.session_state["results"].items():
        assert run.result.rel_error == done[key]
        assert run.label and run.report["valid"] and run.report["sparsity"] == 0.5


def test_beyond_the_memory_cap_runs_stay_listed_and_come_back_exactly(monkeypatch):
    monkeypatch.setattr(runs, "MAX_IN_MEMORY", 2)
    methods = ["local", "full", "magnitude", "sparsegpt"]
    at = run_methods(open_app("pages/prune.py", state={"layer_name": "toy"}), methods)
    listed = list(at.session_state["results"].values())
    assert [r.method for r in listed] == methods    # nothing dropped
    assert [r.in_memory for r in listed] == [False, False, True, True]
    toy = L.load_sample_layer("toy")
    geom = Geometry.preset("2:4", (8, 16))
    for run in listed[:2]:                          # read back from the store, bit for bit
        direct = prune(toy.weight, toy.hessian, geom, 2, method=run.method, damp=0.01)
        assert torch.equal(run.result.mask, direct.mask)
        assert torch.equal(run.result.weight, direct.weight.to(run.result.weight.dtype))


# ---- issue 11, item 9: a typed number is used as shown, or refused where it is typed ------------


@pytest.mark.parametrize(("text", "says"), [("abc", "nnz='abc' is not a whole number"),
                                            ("9", "nnz=9 must be an integer in [0, 4]"),
                                            ("-1", "nnz=-1 must be an integer in [0, 4]")])
def test_geometry_nnz_that_is_not_a_budget_is_refused_where_it_is_typed(text, says):
    at = open_app("pages/geometry.py", params={"pattern": "2:4", "weight": "64, 128",
                                               "nnz": "2"})
    at.text_input(key="_g_nnz").set_value(text).run()
    assert not at.exception, at.exception
    assert at.text_input(key="_g_nnz").value == text          # what is shown …
    assert any(says in e for e in errors(at)), errors(at)      # … is what is refused
    assert not at.metric                                       # nothing drawn from it
    assert ".st-key-_g_nnz" in " ".join(h.value for h in at.html)   # the field is marked


@pytest.mark.parametrize(("field", "text", "says"), [
    ("nnz", "abc", "nnz='abc' is not a whole number"),
    ("nnz", "5", "nnz=5 must be an integer in [0, 4]"),
    ("damp", "abc", "damp='abc' is not a number"),
    ("damp", "-1", "damp=-1 must be at least 0"),
    ("damp", "nan", "damp=nan must be a finite number"),
])
def test_prune_nnz_and_damping_that_are_not_numbers_never_run(field, text, says):
    at = open_app("pages/prune.py", state={"layer_name": "toy"})
    at.radio(key="_p_geo_source").set_value("preset").run()
    at.text_input(key=f"_p_{field}").set_value(text).run()
    assert not at.exception, at.exception
    assert any(says in e for e in errors(at)), errors(at)
    assert not any(b.label == "Run" for b in at.button)        # nothing runs on a hidden value
    assert f".st-key-_p_{field}" in " ".join(h.value for h in at.html)


def test_nnz_zero_warns_that_everything_is_pruned():
    at = open_app("pages/geometry.py", params={"pattern": "2:4", "weight": "64, 128",
                                               "nnz": "0"})
    assert any("100 % sparsity" in w.value for w in at.warning)
    assert {m.label: m.value for m in at.metric}["Sparsity"] == "100.0%"


# ---- issue 11, item 3(a): a typed shape is checked against free memory before any map ---------


def test_a_typed_shape_beyond_free_memory_is_refused_before_its_maps(monkeypatch):
    computed = []
    from obsviz import estimate

    monkeypatch.setattr(estimate, "available_memory", lambda device="cpu": 64 * 2**20)
    monkeypatch.setattr(state, "compute_maps", lambda geom: computed.append(geom))
    at = open_app("pages/geometry.py", params={"pattern": "2:4", "weight": "4096, 4096",
                                               "nnz": "2"})
    shown = errors(at)
    need = estimate.format_bytes(estimate.geometry_maps_bytes((4096, 4096)))
    assert len(shown) == 1 and shown[0].startswith(
        f"labelling every weight of W 4096 × 4096 needs about {need} but only 64.0 MiB"), shown
    assert ".st-key-_g_weight" in " ".join(h.value for h in at.html)   # the shape's field
    assert not computed and not at.metric


# ---- issue 11, item 5: text from users and files is never rendered as markup -------------------

EVIL = "![x](http://127.0.0.1:9/u.png) [Click to fix](http://evil.example) :red[boo] $x$"
#: Markdown that would render a link, an image, a colour directive or math (not backslashed).
LIVE = re.compile(r"(?<!\\)\]\((?!\\)|(?<!\\)!\[|(?<!\\):red\[|(?<!\\)\$[^\u2060]")


def test_hostile_layer_and_file_names_are_shown_as_text(tmp_path):
    at = open_app("pages/prune.py", state={"layer_source": "upload"})
    upload(at, "[Click](http://evil.example).safetensors", toy_file(tmp_path, EVIL))
    label = at.session_state["user_layer"].label
    assert EVIL in label
    run_methods(at, ["local"])
    at.run()
    # (pages/compare.py belongs to the Compare page's rewrite, which escapes its own text)
    for page in ("pages/prune.py", "pages/geometry.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        rendered = every_markdown(at)
        shown = "\n".join(plain(v) for v in rendered)
        assert "[Click](http://evil.example)" in shown or page != "pages/prune.py"
        live = [v for v in rendered if LIVE.search(v)]
        assert not live, (page, live)


def test_hostile_geometry_text_in_the_url_is_shown_as_text():
    at = open_app("pages/geometry.py", params={
        "pattern": "free-form", "weight": "64, 128", "nnz": "2", "view": "",
        "stride": "", "block": "![x](http://127.0.0.1:9/u.png)", "scope": "1, 4"})
    assert errors(at) and "![x](http://127.0.0.1:9/" in errors(at)[0]
    assert not [v for v in every_markdown(at) if LIVE.search(v)]


# ---- setup: the upload limit, the file watcher, the navigation -------------------------------


def test_upload_limits_agree_and_the_watcher_skips_installed_packages():

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] * 2**20 == L.DEFAULT_MAX_BYTES
    assert -(-L.DEFAULT_MAX_BYTES // 2**20) * 2**20 == L.DEFAULT_MAX_BYTES   # whole MiB
    assert config["server"]["fileWatcherType"] == "poll"    # no recursive inotify on .venv
    assert ".venv" in config["server"]["folderWatchBlacklist"]
    assert "showSidebarNavigation" not in config.get("client", {})   # it hides st.navigation too
    at = open_app("pages/prune.py", state={"layer_source": "upload"})
    assert "At most 512.0 MiB" in at.file_uploader(key="_p_upload").help


def test_a_view_that_does_not_fit_the_layer_is_the_view_fields_error():
    at = open_app("pages/geometry.py", params={
        "pattern": "free-form", "weight": "384, 384", "nnz": "2", "view": "384, 385",
        "stride": "", "block": "1, 1", "scope": "1, 4"})
    shown = errors(at)
    assert len(shown) == 1 and shown[0].startswith("view_shape="), shown
    marked = " ".join(h.value for h in at.html)
    assert ".st-key-_g_view" in marked and ".st-key-_g_scope" not in marked


def test_the_pruned_layer_download_loads_back_with_the_engines_loader():
    from ui import exports

    at = run_methods(open_app("pages/prune.py", state={"layer_name": "toy"}), ["sparsegpt"])
    run = next(iter(at.session_state["results"].values()))
    data = exports.safetensors_bytes(run)
    layer = L.load_layer(data, "toy", filename="pruned.safetensors")
    assert torch.equal(layer.weight, run.result.weight.to(layer.weight.dtype))
    assert torch.equal(layer.hessian, L.load_sample_layer("toy").hessian.to(layer.hessian.dtype))


def test_scripts_dev_says_each_step_of_a_first_install():
    text = (ROOT / "scripts" / "dev").read_text()
    steps = re.findall(r'say "([^"]+)"', text)
    assert any("creating the virtualenv" in s for s in steps)
    assert any("installing torch" in s for s in steps)
    assert any("installing $what" in s for s in steps)
    assert any("starting the app" in s for s in steps) and any("running the tests" in s
                                                                 for s in steps)
    # every long step (venv, pip) has a line before it
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.search(r'-m venv|"\$\{pip\[@\]\}"', line):
            assert any("say " in prev for prev in lines[max(0, i - 3):i]), line
