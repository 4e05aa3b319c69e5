"""The Sweep page (being built: see its issue)."""

import streamlit as st

from ui import state

state.sidebar()
st.title("Sweep")
st.info("This page is being built.")
