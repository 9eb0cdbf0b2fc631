from __future__ import annotations

from django.urls import path

from review import replay_views, views

app_name = "review"

urlpatterns = [
    path("usage/", views.usage_page, name="usage"),
    path("usage.csv", views.usage_csv, name="usage_csv"),
    path("teams/<int:team_id>/policy", views.team_policy, name="team_policy"),
    path("replay/<int:message_id>/", replay_views.replay_page, name="replay"),
]
