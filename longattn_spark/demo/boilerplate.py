"""A hard corpus for the probe: long documents that are mostly boilerplate, built from a seed
and files every Python installation has (no download).

Natural text of these kinds repeats itself by nature, so a score that ranks repetition as
"long-range dependency" (or a filter that drops every repetitive window) fails on them. Three
categories, each document with its own vocabulary of templates, names and ids:

- ``bundle``: vendored / amalgamated source files: pieces of standard-library modules, each
  preceded by the same long license header (Apache-2.0, MIT or BSD, chosen per document) and a
  generated file banner, as in a single-file bundle of many modules.
- ``records``: templated records, as exported by a business system: per document one record
  template (of several), its own customers, products and places, fields filled at random,
  with a free-text note (a sentence of the standard library's docstrings) on some records.
- ``logs``: a service's log file: increasing timestamps, levels, the service's own modules,
  message templates with request ids, users, paths, status codes and latencies, periodic
  health checks, and now and then a stack trace (the service's own few, repeated exactly).
"""

from __future__ import annotations

import ast
import json
import random
import sysconfig
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

CATEGORIES = ("bundle", "records", "logs")

APACHE = """Licensed to the Apache Software Foundation (ASF) under one or more contributor license
agreements.  See the NOTICE file distributed with this work for additional information
regarding copyright ownership.  The ASF licenses this file to you under the Apache License,
Version 2.0 (the "License"); you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the
License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND,
either express or implied.  See the License for the specific language governing permissions
and limitations under the License."""

MIT = """Copyright (c) {year} {owner}

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE."""

BSD = """Copyright (c) {year}, {owner}
All rights reserved.

Redistribution and use in source and binary forms, with or without modification, are
permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of
   conditions and the following disclaimer.
2. Redistributions in binary form must reproduce the above copyright notice, this list of
   conditions and the following disclaimer in the documentation and/or other materials
   provided with the distribution.
3. Neither the name of the copyright holder nor the names of its contributors may be used to
   endorse or promote products derived from this software without specific prior written
   permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR
IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY
AND FITNESS FOR A PARTICULAR PURPOSE ARE DISCLAIMED."""

FIRST = ("Maria", "James", "Aiko", "Luca", "Fatima", "Olga", "Chen", "Priya", "Tom", "Ines",
         "Kwame", "Sofia", "Noah", "Elif", "Mateo", "Hana", "Omar", "Lena", "Ravi", "Zoe")
LAST = ("Lopez", "Smith", "Tanaka", "Rossi", "Haddad", "Ivanova", "Wei", "Sharma", "Brown",
        "Garcia", "Mensah", "Costa", "Miller", "Yilmaz", "Fernandez", "Kim", "Farouk",
        "Schmidt", "Patel", "Martin")
CITIES = ("Lyon", "Osaka", "Porto", "Denver", "Accra", "Krakow", "Pune", "Leeds", "Quito",
          "Tartu", "Busan", "Graz", "Perth", "Oslo", "Cork", "Izmir", "Austin", "Malmo")
PRODUCTS = ("steel bolt M6", "oak shelf", "USB-C cable", "ceramic mug", "LED panel",
            "wool scarf", "desk lamp", "garden hose", "paper ream", "bike helmet", "tea kettle",
            "phone stand", "yoga mat", "drill bit set", "water filter", "notebook A5")
RECORD_TEMPLATES = (
    "Order #{id} was placed by {name} ({email}) on {date} for {qty} x {product} at {price} "
    "{currency} each. Shipping: {ship} to {city}. Status: {status}.",
    "{{\"order_id\": {id}, \"customer\": \"{name}\", \"email\": \"{email}\", \"date\": \"{date}\", "
    "\"item\": \"{product}\", \"quantity\": {qty}, \"unit_price\": {price}, \"currency\": "
    "\"{currency}\", \"city\": \"{city}\", \"status\": \"{status}\"}}",
    "INVOICE {id} | {date} | {name} | {city} | {product} | qty {qty} | {price} {currency} | "
    "{status}",
    "Customer {name} from {city} returned {qty} {product} (order {id}, bought {date}); refund of "
    "{price} {currency} is {status}.",
    "Ticket {id} opened on {date} by {name} <{email}>: the {product} delivered to {city} "
    "arrived damaged ({qty} units). Priority: {ship}. State: {status}.",
)
STATUSES = ("shipped", "pending", "delivered", "cancelled", "on hold", "processing")
SHIPPING = ("standard", "express", "pickup", "freight", "overnight")
CURRENCIES = ("EUR", "USD", "JPY", "GBP", "INR")
SERVICES = ("billing", "search", "auth", "checkout", "inventory", "gateway", "notifier",
            "catalog", "payments", "reports")
LOG_TEMPLATES = (
    "request {rid} {method} {path} -> {status} in {ms} ms (user {user})",
    "cache {hit} for key {key} ({ms} ms)",
    "db query on {table} took {ms} ms, rows={rows}",
    "user {user} logged in from {ip}",
    "retrying call to {upstream} (attempt {n}/5) after {ms} ms: connection reset",
    "queue {queue} depth={rows} lag={ms}ms",
    "job {rid} finished: {rows} items processed, {n} failed",
    "token refreshed for client {key}, expires in {n}h",
    "slow response from {upstream}: {ms} ms > threshold 500 ms",
    "config reloaded: {n} keys changed",
)
PATHS = ("/api/v1/orders", "/api/v1/users/{n}", "/health", "/api/v2/search", "/login",
         "/api/v1/cart", "/static/app.js", "/api/v1/items/{n}", "/metrics", "/api/v2/export")


def stdlib_sources(min_chars: int = 4000) -> list[tuple[str, str]]:
    """(name, source) of standard-library modules, in name order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(stdlib.glob("*.py")):
        if path.stat().st_size >= min_chars:
            out.append((path.name, path.read_text(encoding="utf-8", errors="replace")))
    return out


def docstring_sentences(sources: list[tuple[str, str]], limit: int = 3000) -> list[str]:
    """Sentences of the standard library's docstrings (notes for the records)."""
    sentences: list[str] = []
    for _, text in sources:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if doc:
                    first = " ".join(doc.split(".")[0].split())
                    if 30 <= len(first) <= 160:
                        sentences.append(first + ".")
        if len(sentences) >= limit:
            break
    return sentences


def bundle_document(rng: random.Random, sources: list[tuple[str, str]], pieces: int) -> str:
    """Modules' pieces, each behind the document's one license header and a banner."""
    owner = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    header = rng.choice((APACHE, MIT, BSD)).format(year=rng.randint(2005, 2024), owner=owner)
    commented = "\n".join(("# " + line).rstrip() for line in header.splitlines())
    parts = []
    for _ in range(pieces):
        name, text = rng.choice(sources)
        lines = text.splitlines()
        start = rng.randrange(0, max(1, len(lines) - 80))
        body = "\n".join(lines[start:start + rng.randint(40, 140)])
        parts.append(f"# ---- vendored/{name} (bundled by tools/amalgamate.py) ----\n"
                     f"{commented}\n\n{body}\n")
    return "\n".join(parts)


def records_document(rng: random.Random, notes: list[str], n: int) -> str:
    """One export of templated records with the document's own entities."""
    template = rng.choice(RECORD_TEMPLATES)
    names = [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(12)]
    cities = rng.sample(CITIES, 5)
    products = rng.sample(PRODUCTS, 6)
    currency = rng.choice(CURRENCIES)
    day = datetime(2020, 1, 1) + timedelta(days=rng.randrange(1500))
    record_id = rng.randrange(10_000, 900_000)
    lines = []
    for _ in range(n):
        name = rng.choice(names)
        day += timedelta(hours=rng.randrange(1, 30))
        record_id += rng.randrange(1, 40)
        line = template.format(
            id=record_id, name=name, email=name.lower().replace(" ", ".") + "@example.com",
            date=day.strftime("%Y-%m-%d"), qty=rng.randint(1, 12), product=rng.choice(products),
            price=f"{rng.uniform(0.5, 300):.2f}", currency=currency,
            ship=rng.choice(SHIPPING), city=rng.choice(cities), status=rng.choice(STATUSES))
        if rng.random() < 0.3:
            line += " Note: " + rng.choice(notes)
        lines.append(line)
    return "\n".join(lines) + "\n"


def logs_document(rng: random.Random, sources: list[tuple[str, str]], n: int) -> str:
    """One service's log file."""
    service = rng.choice(SERVICES)
    modules = [f"{service}.{rng.choice(('api', 'core', 'db', 'cache', 'worker', 'http'))}."
               f"{name.removesuffix('.py')}" for name, _ in rng.sample(sources, 6)]
    templates = rng.sample(LOG_TEMPLATES, 6)
    users = [f"{rng.choice(FIRST).lower()}{rng.randint(1, 999)}" for _ in range(15)]
    upstreams = [f"{rng.choice(SERVICES)}-svc:{rng.choice((8080, 9000, 5432, 6379))}"
                 for _ in range(3)]
    traces = []
    for _ in range(2):
        _, text = rng.choice(sources)
        defs = [line.strip() for line in text.splitlines() if line.strip().startswith("def ")]
        frames = rng.sample(defs, min(4, len(defs))) if defs else ["def run(self):"]
        traces.append("Traceback (most recent call last):\n" + "\n".join(
            f'  File "/srv/{service}/{m.split(".")[-1]}.py", line {rng.randint(10, 900)}, in '
            f"{f[4:].split('(')[0]}" for m, f in zip(modules, frames)) +
            f"\n{rng.choice(('KeyError', 'TimeoutError', 'ValueError'))}: "
            f"{rng.choice(('missing field', 'deadline exceeded', 'bad state'))}")
    host = f"{service}-{rng.randint(1, 9)}.prod.internal"
    time = datetime(2024, 1, 1) + timedelta(seconds=rng.randrange(10**7))
    lines = []
    for i in range(n):
        time += timedelta(milliseconds=rng.randrange(5, 4000))
        stamp = time.strftime("%Y-%m-%d %H:%M:%S,") + f"{time.microsecond // 1000:03d}"
        if i % 25 == 0:
            lines.append(f"{stamp} INFO  [{host}] {service}.health: health check ok "
                         f"(uptime {i * 7}s)")
            continue
        level = rng.choices(("INFO ", "DEBUG", "WARN ", "ERROR"), (70, 15, 10, 5))[0]
        message = rng.choice(templates).format(
            rid=f"{rng.getrandbits(48):012x}", method=rng.choice(("GET", "POST", "PUT")),
            path=rng.choice(PATHS).format(n=rng.randint(1, 99999)),
            status=rng.choice((200, 200, 200, 201, 204, 400, 404, 500)),
            ms=rng.randint(1, 2500), user=rng.choice(users), hit=rng.choice(("hit", "miss")),
            key=f"{rng.getrandbits(32):08x}", table=rng.choice(("orders", "users", "items")),
            rows=rng.randint(0, 5000), ip=f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
            f"{rng.randint(1, 254)}", upstream=rng.choice(upstreams), n=rng.randint(1, 5),
            queue=rng.choice(("emails", "events", "exports")))
        lines.append(f"{stamp} {level} [{host}] {rng.choice(modules)}: {message}")
        if level == "ERROR" and rng.random() < 0.5:
            lines.append(rng.choice(traces))
    return "\n".join(lines) + "\n"


def boilerplate_documents(docs_per_category: int = 40, seed: int = 0) -> Iterator[dict]:
    """The corpus's documents (``id``, ``category``, ``text``), deterministic in ``seed``."""
    sources = stdlib_sources()
    notes = docstring_sentences(sources)
    for category in CATEGORIES:
        for i in range(docs_per_category):
            rng = random.Random(f"{seed}/{category}/{i}")
            if category == "bundle":
                text = bundle_document(rng, sources, pieces=rng.randint(6, 14))
            elif category == "records":
                text = records_document(rng, notes, n=rng.randint(120, 260))
            else:
                text = logs_document(rng, sources, n=rng.randint(250, 500))
            yield {"id": f"{category}/{i:03d}", "category": category, "text": text}


def build_boilerplate_corpus(output: str | Path, docs_per_category: int = 40,
                             seed: int = 0) -> dict[str, int]:
    """Write the corpus as JSONL (id, category, text); return documents per category."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with output.open("w", encoding="utf-8") as f:
        for doc in boilerplate_documents(docs_per_category, seed):
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts[doc["category"]] = counts.get(doc["category"], 0) + 1
    return counts
