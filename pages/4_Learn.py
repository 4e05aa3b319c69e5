"""Learn: a placeholder until the page lands."""

import streamlit as st

from ui import state

st.set_page_config(page_title="Learn · obsviz", page_icon=":material/grid_view:", layout="wide")
state.sidebar()
st.title("Learn")
st.info("Coming soon. Learn how the OBS modes differ, step by step.")
