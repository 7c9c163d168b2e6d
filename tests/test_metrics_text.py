import pytest

from scoring import tasks
from scoring.metrics import text as ours
from scoring.metrics.text import is_english, is_refusal, length_ok, repetition_rate, split_sentences
from scoring.tasks import count_sentences, load_suite

TRICKY = [
    "It holds 1.7 litres. It costs 89 USD.",
    "Presets, e.g. 70 °C, suit tea. Nice!",
    "Dr. Smith met J. Doe at 5 p.m. Then they left… \"Great!\" she said.",
    "**Title**\n\n- bullet one\n- bullet two\n\n  \n\nLast para, etc. And more",
    "— * — _ _",
    "snake_case_word and word_ plus ___",
    "",
]


def test_counts_agree_with_the_suite_on_every_reference_and_tricky_text():
    suite = load_suite()
    texts = [t for item in suite.items.values() for t in item.references.values()] + TRICKY
    for text in texts:
        assert ours.count_words(text) == tasks.count_words(text), text[:40]
        assert ours.count_sentences(text) == tasks.count_sentences(text), text[:40]
        assert ours.count_paragraphs(text) == tasks.count_paragraphs(text), text[:40]


def test_counting_is_linear_on_long_unspaced_output():
    # The backtracking pattern \S*[^\W_]\S* would take hours on this.
    blob = "[" * 300_000
    assert ours.count_words(blob) == 0 and ours.count_sentences(blob) == 0 and ours.count_paragraphs(blob) == 0
    assert ours.count_words(blob + " a") == 1


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It holds 1.7 litres. It costs 89 USD.", ["It holds 1.7 litres.", "It costs 89 USD."]),
        ("Presets, e.g. 70 °C, suit tea. Nice!", ["Presets, e.g. 70 °C, suit tea.", "Nice!"]),
        ("Title line\nBody sentence one. Two?", ["Title line", "Body sentence one.", "Two?"]),
        ("First para.\n\nSecond para", ["First para.", "Second para"]),
        ("", []),
        ("— * —", []),
    ],
)
def test_split_sentences_cases(text, expected):
    assert split_sentences(text) == expected
    assert len(expected) == count_sentences(text)


def test_length_band_edges():
    assert length_ok(75, 75, 150) and length_ok(150, 75, 150)
    assert not length_ok(74, 75, 150) and not length_ok(151, 75, 150)
    assert not length_ok(0, 1, 50)


def test_repetition_rate():
    assert repetition_rate("a b c d a b c d") == pytest.approx(1 / 5)
    assert repetition_rate("The kettle is good. The kettle is good.") == pytest.approx(1 / 5)
    assert repetition_rate("one two three four five six") == 0.0
    assert repetition_rate("too short") == 0.0
    # case and punctuation do not hide a repeat
    assert repetition_rate("Big red lamp here, big red lamp here") == pytest.approx(1 / 5)
    looping = " ".join(["it is a kettle"] * 10)
    # 40 words, 37 4-grams, of which only the first 4 (one cycle) are new
    assert repetition_rate(looping) == pytest.approx(33 / 37)


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I cannot provide a description of this product.",
        "As an AI language model, I do not have opinions.",
        "I am unable to complete this request.",
    ],
)
def test_refusals_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "The Aurora Kettle heats 1.7 litres of water in minutes.",
        "You can't go wrong with the keep-warm mode, which holds water for 30 minutes.",
        "",
    ],
)
def test_non_refusals(text):
    assert not is_refusal(text)


def test_language_check():
    english = (
        "The Aurora Kettle is an electric kettle from Lumen Home. It holds 1.7 litres of water and "
        "has four temperature presets, so it suits tea and coffee alike."
    )
    spanish = (
        "La tetera Aurora es un hervidor eléctrico de Lumen Home. Tiene capacidad para 1,7 litros "
        "de agua y cuatro ajustes de temperatura para preparar té y café con comodidad."
    )
    chinese = "这款电热水壶容量为一点七升，功率两千二百瓦，带有四档温度预设和保温功能，非常适合泡茶和咖啡使用。" * 2
    assert is_english(english) is True
    assert is_english(spanish) is False
    assert is_english("Aurora 这款 电热水壶 容量 为 一点七升 功率") is False
    assert is_english(chinese) in (False, None)
    assert is_english("Aurora Kettle — 1.7 L, 2200 W, stainless steel, 89 USD") is True  # telegraphic
    assert is_english("Aurora Kettle") is None  # too short to judge
