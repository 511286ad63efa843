"""Typed application keys: how handlers reach the app's shared dependencies."""

from __future__ import annotations

from aiohttp import web

from proxy.core.services import Services
from proxy.infra.clients import ClientRegistry
from proxy.infra.metrics import Metrics
from proxy.infra.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
SERVICES = web.AppKey("services", Services)
CLIENTS = web.AppKey("clients", ClientRegistry)
METRICS = web.AppKey("metrics", Metrics)
