"""The Streamlit console for SREs; reads only through Governor's API."""
