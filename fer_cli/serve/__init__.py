"""`fer serve`: the HTTP front end, beside the command line in fer_cli/cli/ (FastAPI and uvicorn, the serve extra)."""
