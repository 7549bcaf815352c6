"""The app's pages, one file per page, registered with st.navigation in webapp/app.py."""
