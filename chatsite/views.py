from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_safe


@require_safe
def status(request: HttpRequest) -> HttpResponse:
    """The status page (/status): what the model and its scheduler are doing."""
    from conversations.runtime import get_runtime

    runtime = get_runtime()
    # Asking for the page is asking for the model: start loading it if nothing has yet
    # (idempotent, in a background thread), so the page can show it becoming ready.
    runtime.start_loading()
    from upstreams.health import upstream_report_sync

    status = runtime.status()
    staff = request.user.is_active and request.user.is_staff
    if not staff:
        # The file's path and a load error's text (paths again) are for staff only.
        status["model_path"] = ""
        if status["error"]:
            status["error"] = "the model failed to load (the details are shown to staff)"
    context = {"status": status, "staff": staff, "upstreams": upstream_report_sync(request)}
    return render(request, "status.html", context)


@require_safe
def health(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers HTTP. Says nothing about the model (see `/status`)."""
    return JsonResponse({"status": "ok"})
