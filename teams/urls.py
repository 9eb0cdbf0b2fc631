from __future__ import annotations

from django.urls import path

from teams import views

app_name = "teams"

urlpatterns = [
    path("teams/", views.team_list, name="list"),
    path("teams/<int:team_id>/", views.team_page, name="team"),
    path("teams/<int:team_id>/invites", views.create_invite, name="create_invite"),
    path("teams/<int:team_id>/invites/<int:invite_id>/revoke", views.revoke_invite, name="revoke_invite"),
    path("teams/<int:team_id>/members/<int:membership_id>/role", views.set_role, name="set_role"),
    path("teams/<int:team_id>/members/<int:membership_id>/remove", views.remove_member, name="remove_member"),
    path("teams/<int:team_id>/keys/<int:key_id>/revoke", views.revoke_key, name="revoke_key"),
    path("invite/<str:token>/", views.invite, name="invite"),
]
