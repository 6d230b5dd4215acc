"""HTML cards: escaping, PII masking, missing values, the campaign card's content and the red banner."""
from __future__ import annotations

import numpy as np
import pandas as pd

from cvm import cards


def _arms() -> pd.DataFrame:
    return pd.DataFrame({"campaign_id": ["K1", "K1"], "arm": ["10pct", "20pct"], "n_treated": [900, 880],
                         "n_control": [200, 200], "conversion_rate_treated": [0.12, 0.10],
                         "conversion_rate_control": [0.08, 0.08], "conversion_lift_abs": [0.04, 0.02],
                         "conversion_lift_abs_low": [0.01, np.nan], "conversion_lift_abs_high": [0.07, np.nan],
                         "p_value_adjusted": [0.01, 0.4], "incremental_revenue": [1500.0, 300.0],
                         "incremental_revenue_low": [200.0, -900.0], "incremental_revenue_high": [2800.0, 1500.0],
                         "incremental_margin": [600.0, 120.0], "incremental_margin_net": [310.0, -250.0],
                         "recommendation": ["scale: margin is confidently positive", "continue: need 1,000 more"]})


def test_render_escapes_and_masks_pii() -> None:
    card = cards.Card("<script>x</script>", sections=[
        cards.Section("table", pd.DataFrame({"email": ["jane@example.com"], "note": ["call bob@example.org"]})),
        cards.Section("figures", {"missing": np.nan, "count": 12345, "flag": True}),
        cards.Section("text", "a < b")])
    page = cards.render(card)
    assert "<script>x" not in page and "&lt;script&gt;" in page
    assert "@example" not in page
    assert "–" in page and "12,345" in page and "yes" in page and "a &lt; b" in page


def test_campaign_card_content_banner_and_file(tmp_path) -> None:
    funnel = pd.DataFrame({"campaign_id": "K1", "group": ["treatment", "control"], "arm": ["10pct", "control"],
                           "contacts": [900, 200], "delivered": [880, 0], "rate_delivered": [0.978, 0.0],
                           "converted": [108, 16], "rate_converted": [0.12, 0.08]})
    srm = {"control_share_observed": 0.15, "control_share_planned": 0.2, "srm_p_value": 1e-6, "srm_flag": True}
    dilution = {"discount_cost": 500.0, "dilution_cost": 320.0, "contact_cost": 90.0,
                "net_incremental_margin": 60.0, "roi": 0.1}
    card = cards.campaign_card({"campaign_id": "K1/2025", "name": "Spring", "type": "upsell", "channel": "email",
                                "start_date": pd.Timestamp("2025-03-03")}, _arms(), funnel, dilution, srm)
    page = cards.render(card)
    assert card.banner and "Sample-ratio mismatch" in page
    for text in ("Spring", "2025-03-03", "scale: margin", "continue: need 1,000 more", "+1.00 to +7.00", "320",
                 "delivered → converted", "15.0% / 20.0%"):
        assert text in page, text
    path = cards.write(card, tmp_path / "cards", "K1/2025")
    assert path.name == "K1_2025.html" and path.read_text(encoding="utf-8") == page


def test_campaign_card_without_revenue_or_checks() -> None:
    """Conversion-only tests (no spend column): no revenue section, no banner, still a decision."""
    arms = _arms().drop(columns=[c for c in _arms().columns if "revenue" in c or "margin" in c])
    card = cards.campaign_card({"campaign_id": "K2", "name": "Gate"}, arms, pd.DataFrame())
    headings = [s.heading for s in card.sections]
    assert "Incremental revenue and margin" not in headings and card.banner is None
    assert card.decision.startswith("Recommendation")
