"""A Flask app as anyone writes it."""

import os

from flask import Flask, request

app = Flask(__name__)


@app.get("/")
def index() -> str:
    return f"pid {os.getpid()}"


@app.post("/echo")
def echo() -> bytes:
    return request.get_data()
