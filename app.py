"""obsviz: the app's entry point (``streamlit run app.py``) and its home page.

The pages are listed here (``st.navigation``); each page is a short script under ``pages/``.
What every page shares (the device, the current layer, the chosen geometry) is drawn here once,
in the sidebar, before the page runs (``ui.state.draw_sidebar``).
"""

import streamlit as st

from obsviz import Geometry
from obsviz.figures import geometry as gfig

from ui import state
from ui.text import md

PAGES = {
    "geometry": ("pages/geometry.py", "Geometry", ":material/grid_view:",
                 "Pick a preset or write your own view, block and scope; see blocks, scopes, the "
                 "column map and the row coupling."),
    "prune": ("pages/prune.py", "Prune", ":material/content_cut:",
              "Run every OBS mode and the baselines on a real layer, with a memory estimate "
              "first."),
    "compare": ("pages/compare.py", "Compare", ":material/compare_arrows:",
                "Error and sparsity side by side; where each method puts its error."),
    "model": ("pages/model.py", "Model", ":material/account_tree:",
              "Prune every layer of a real model in sequence; see what each pattern and method "
              "does to the whole model and which layers carry the damage."),
    "sensitivity": ("pages/sensitivity.py", "Sensitivity", ":material/tune:",
                    "Prune each layer of a model alone, rank the layers by the damage each "
                    "does, and build a plan that spares the most sensitive ones."),
    "sweep": ("pages/sweep.py", "Sweep", ":material/grid_on:",
              "Grids of layers × geometries × methods, kept in a run database that outlives the "
              "session."),
    "learn": ("pages/learn.py", "Learn", ":material/school:",
              "The math behind the modes, on a layer small enough to follow by hand."),
}


def home() -> None:
    """What obsviz is, a geometry drawn, the path through the app, the device and layer."""
    st.title("obsviz")
    st.markdown(
        "#### A workbench for structured Optimal Brain Surgeon pruning\n"
        "Describe a sparsity **geometry** (a view of the weight, the **block** removed as one "
        "unit, the **scope** whose blocks compete) and see exactly which weights it groups and "
        "which rows it couples. Prune real layers with every OBS compensation mode and the usual "
        "baselines, on CPU or GPU. Then compare error and sparsity side by side, and learn why "
        "the modes differ.")

    left, right = st.columns([1.5, 1], gap="large")
    with left:
        st.subheader("A geometry, drawn")
        example = Geometry.preset("coupled-2:4", (8, 32))
        window = gfig.layout_window(gfig.compute_maps(example))
        st.plotly_chart(gfig.layout_figure(window, nnz=2, width=620),
                        config={"displayModeBar": False})
        st.caption("`coupled-2:4` on an 8 × 32 weight. Each colour is a block: two weights 8 "
                   "columns apart. Dark outlines are scopes of 4 blocks, which keep 2; the faded, "
                   "hatched blocks are one mask the pruner could choose.")

    with right:
        st.subheader("The path through the app")
        for i, (key, (_, title, _, text)) in enumerate(PAGES.items(), start=1):
            st.page_link(NAV[key], label=f"{i} · {title}")
            st.caption(text)

        st.subheader("Running on")
        active = state.current_layer()
        c1, c2 = st.columns(2)
        c1.metric("Device", state.device().upper())
        if active is not None:
            M, K = active.layer.shape
            c2.metric("Current layer", f"{M} × {K}")
            st.caption(f"**{md(active.label)}**: {md(getattr(active.layer, 'source', ''))}")
        else:
            c2.metric("Current layer", "none")
            st.caption("No layer is loaded; the pages work on a shape you choose.")


NAV = {key: st.Page(path, title=title, icon=icon, url_path=key)
       for key, (path, title, icon, _) in PAGES.items()}
st.set_page_config(page_title="obsviz", page_icon=":material/grid_view:", layout="wide")
page = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True),
                      *NAV.values()])
state.draw_sidebar()
page.run()
