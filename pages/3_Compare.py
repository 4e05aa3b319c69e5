"""Compare: a placeholder until the page lands."""

import streamlit as st

from ui import state

st.set_page_config(page_title="Compare · obsviz", page_icon=":material/grid_view:", layout="wide")
state.sidebar()
st.title("Compare")
st.info("Coming soon. Compare error and sparsity of pruning runs side by side.")
