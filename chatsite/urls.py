from __future__ import annotations

from django.contrib import admin
from django.urls import path

from chatsite import views

urlpatterns = [
    path("", views.status, name="status"),
    path("health", views.health, name="health"),
    path("admin/", admin.site.urls),
]
