"""Typed application keys: how handlers reach the app's shared dependencies."""

from __future__ import annotations

from aiohttp import web

from proxy.clients import ClientRegistry
from proxy.metrics import Metrics
from proxy.service import Services
from proxy.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
CLIENTS = web.AppKey("clients", ClientRegistry)
METRICS = web.AppKey("metrics", Metrics)
