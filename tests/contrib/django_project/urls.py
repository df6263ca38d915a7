from django.urls import path

from . import views

urlpatterns = [
    path("cached/", views.cached_page),
    path("plain/", views.plain),
    path("low-level/", views.low_level),
    path("fragment/", views.fragment),
    path("session/", views.session_counter),
]
