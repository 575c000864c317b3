"""Draw a Plan as Mermaid or Graphviz DOT text."""

from __future__ import annotations

import re
import zlib

from engine.compiler.plan import Node, Plan

_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def to_mermaid(plan: Plan) -> str:
    """A ``flowchart TD``: one box per node, `until` checks as diamonds, critical path bold."""
    lines = ["flowchart TD"]
    for node in plan.nodes.values():
        label = _label(node).replace('"', "#quot;").replace("\n", "<br/>")
        shape = f'{{"{label}"}}' if node.kind == "until" else f'["{label}"]'
        lines.append(f"    {_safe(node.id)}{shape}")
    for parent, child in plan.edges:
        lines.append(f"    {_safe(parent)} --> {_safe(child)}")
    critical = [_safe(node_id) for node_id in plan.critical_path]
    if critical:
        lines.append("    classDef critical stroke-width:3px")
        lines.append(f"    class {','.join(critical)} critical")
    return "\n".join(lines) + "\n"


def to_dot(plan: Plan) -> str:
    """A ``digraph``: one node per task, `until` checks as diamonds, critical path bold."""
    critical = set(plan.critical_path)
    lines = [f"digraph {_quote(plan.name)} {{", "    rankdir=TB;", "    node [shape=box];"]
    for node in plan.nodes.values():
        attributes = [f"label={_quote(_label(node))}"]
        if node.kind == "until":
            attributes.append("shape=diamond")
        if node.id in critical:
            attributes.append("penwidth=3")
        lines.append(f"    {_quote(node.id)} [{', '.join(attributes)}];")
    for parent, child in plan.edges:
        lines.append(f"    {_quote(parent)} -> {_quote(child)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _label(node: Node) -> str:
    if node.kind == "until":
        return f"until {node.condition} (round {node.round})"
    detail: str = node.kind
    if node.policies is not None and node.policies.models:
        detail = " → ".join(node.policies.models)
    elif node.task is not None and node.task.kind in ("call", "workflow"):
        detail = f"{node.task.kind}: {node.task.source}"
    return f"{node.id}\n{detail}"


def _safe(node_id: str) -> str:
    # Mermaid ids: letters, digits, underscores; the hash keeps distinct ids distinct.
    cleaned = _UNSAFE.sub("_", node_id)
    return cleaned if cleaned == node_id else f"{cleaned}_{zlib.crc32(node_id.encode()) % 10**6}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
