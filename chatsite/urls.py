from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from chatsite import accounts, ops, views
from conversations.api import http as api_http
from teams import oidc

urlpatterns = [
    path("", include("conversations.urls")),
    path("status", views.status, name="status"),
    path("health", views.health, name="health"),
    path("ready", ops.ready, name="ready"),
    path("metrics", ops.metrics_view, name="metrics"),
    path("accounts/login/", accounts.LoginView.as_view(next_page="chat:home"), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="login"), name="logout"),
    # Password reset only with a mail server (chatsite/accounts.py); these come before, and so
    # replace, the same paths in django.contrib.auth.urls.
    path("accounts/password_reset/", accounts.password_reset, name="password_reset"),
    path("accounts/password_reset/done/", accounts.password_reset_done, name="password_reset_done"),
    path("accounts/reset/<uidb64>/<token>/", accounts.password_reset_confirm, name="password_reset_confirm"),
    path("accounts/reset/done/", accounts.password_reset_complete, name="password_reset_complete"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("review/", include("review.urls")),
    path("", include("teams.urls")),
    # Single sign-on (teams/oidc.py; 404 unless CHAT_OIDC_ISSUER is set): mozilla-django-oidc's names.
    path("oidc/authenticate/", oidc.AuthenticationRequestView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", oidc.CallbackView.as_view(), name="oidc_authentication_callback"),
    path("v1", api_http.not_found),
    path("v1/", include("conversations.api.urls")),
]
