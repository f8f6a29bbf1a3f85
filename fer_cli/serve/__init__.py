"""`fer serve`: the HTTP front end, beside cli.py (FastAPI and uvicorn, the serve extra)."""
