import os

from django.http import HttpResponse
from django.urls import path


def index(request):
    return HttpResponse(f"pid {os.getpid()}", content_type="text/plain")


urlpatterns = [path("", index)]
