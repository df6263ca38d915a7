"""URLs of the example site."""

from __future__ import annotations

from django.urls import path

from cachedemo import views

urlpatterns = [
    path("", views.index),
    path("square/<int:n>/", views.square),
    path("clock/", views.clock),
]
