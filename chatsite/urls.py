from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chatsite import ops, views
from conversations.api import http as api_http

urlpatterns = [
    path("", include("conversations.urls")),
    path("status", views.status, name="status"),
    path("health", views.health, name="health"),
    path("ready", ops.ready, name="ready"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("accounts/login/", auth_views.LoginView.as_view(next_page="chat:home"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("review/", include("review.urls")),
    path("v1", api_http.not_found),
    path("v1/", include("conversations.api.urls")),
]
