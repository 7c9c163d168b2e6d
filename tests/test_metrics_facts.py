import pytest

from scoring.metrics.facts import fact_coverage, fact_stated, output_numbers, unsupported_numbers
from scoring.tasks import load_suite

FACTS = {
    "brand": "Lumen Home",
    "capacity_litres": 1.7,
    "power_watts": 2200,
    "temperature_presets": "70, 80, 90 and 100 °C",
    "warranty_years": 2,
    "launched": "2019-03-14",
    "cordless": True,
    "gluten_free": "yes",
}


def test_numbers_match_numerically():
    assert fact_stated(2200, "a 2,200-watt element")
    assert fact_stated(2200, "2200 W")
    assert fact_stated(1.7, "holds 1.70 litres")
    assert not fact_stated(1.7, "holds 17 litres")
    assert not fact_stated(2200, "2.2 kW")  # no unit arithmetic, documented


def test_small_integers_in_words():
    assert fact_stated(2, "comes with a two-year warranty")
    assert not fact_stated(2, "comes with a generous warranty")


def test_strings_need_half_their_content_tokens():
    assert fact_stated("Lumen Home", "made by lumen home")
    assert fact_stated("70, 80, 90 and 100 °C", "presets at 70, 80 and 90 degrees")  # 3 of 5 tokens
    assert not fact_stated("70, 80, 90 and 100 °C", "a single 100 degree setting")  # 1 of 5
    assert fact_stated("cloud-forest orchids", "famous for its cloud forest orchid")  # stemmed


def test_dates_and_yes_no_values():
    assert fact_stated("2019-03-14", "launched in March 2019")
    assert fact_stated("2019-03-14", "launched in 2019")  # the year is what must be right
    assert not fact_stated("2019-03-14", "launched in March 2020")
    assert fact_stated(True, "a cordless design", key="cordless")
    assert fact_stated("yes", "the crisps are gluten-free", key="gluten_free")
    assert not fact_stated("yes", "the crisps are crunchy", key="gluten_free")


def test_fact_coverage_share():
    text = "Lumen Home's kettle holds 1.7 litres, draws 2200 W and has a two-year warranty."
    # stated: brand, capacity, power, warranty = 4 of 8
    assert fact_coverage(FACTS, text) == pytest.approx(4 / 8)
    assert fact_coverage(FACTS, "") == 0.0
    assert fact_coverage({}, text) is None


def test_references_cover_their_facts():
    suite = load_suite()
    for item in suite.items.values():
        assert fact_coverage(item.facts, item.references["strong"]) >= 0.9, item.id


def test_unsupported_numbers():
    source = load_suite().source_text("prod-aurora-kettle")
    ok = "The 1.7-litre kettle has a 2,200-watt element and costs 89 USD since March 14, 2019."
    assert unsupported_numbers(ok, source) == (0, 0.0)
    bad = "The 1.8-litre kettle costs 89 USD and boils in 4 minutes."
    assert unsupported_numbers(bad, source) == (2, pytest.approx(2 / 3))
    assert unsupported_numbers("No numbers here.", source) == (0, None)
    # the sheet's dates supply their parts: "14" and "3" (March) are supported
    assert unsupported_numbers("Launched 14/3/2019.", source) == (0, 0.0)


def test_list_markers_are_not_claims():
    text = "1. Holds 1.7 litres\n2) Costs 89 USD\n  3. Weighs 1.2 kg"
    assert output_numbers(text) == [1.7, 89.0, 1.2]
