"""Defect Discovery Studio web app (Streamlit): `streamlit run webapp/app.py`.

Pages live in webapp/views/ and are registered with st.navigation in webapp/app.py; the app
calls storage and, through the job queue (webapp/job_control.py enqueues; the jobs/ package runs them), the pipeline.
"""
