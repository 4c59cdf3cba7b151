"""tradeflow's REST API (FastAPI): starts, updates and queries workflows; serves read views.

``create_app()`` builds the application; ``python -m api`` serves it with uvicorn.
"""
