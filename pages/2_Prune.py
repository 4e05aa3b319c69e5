"""Prune: a placeholder until the page lands."""

import streamlit as st

from ui import state

st.set_page_config(page_title="Prune · obsviz", page_icon=":material/grid_view:", layout="wide")
state.sidebar()
st.title("Prune")
st.info("Coming soon. Prune a real layer with every OBS mode and the usual baselines.")
