"""The Model page (being built: see its issue)."""

import streamlit as st

from ui import state

state.sidebar()
st.title("Model")
st.info("This page is being built.")
