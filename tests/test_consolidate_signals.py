"""Consolidation signals, duplicate verdicts and supersession on real sentences, plus
property tests for the invariants the store relies on (exact keys, MinHash, claims)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memstack.core.consolidate.dedup import DedupConfig, duplicate_verdict, substituted
from memstack.core.consolidate.signals import (
    Claim,
    band_keys,
    changed_signals,
    exact_key,
    extract_claims,
    is_multi_valued,
    jaccard,
    jaccard_rows,
    keywords,
    minhash,
    shingle_jaccard,
    value_signals,
    word_count,
)
from memstack.core.consolidate.supersede import Relation, relate, slot_keys

FAST = settings(deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow])


def rec(text, speaker="Alice", session="s1", ns="default", valid_from="2024-01-01T00:00:00Z"):
    return {"text": text, "ns": ns, "level": "turn", "valid_from": valid_from,
            "source": {"speaker": speaker, "session": session}}


def claims(text, speaker="Alice"):
    return {(c.subject, c.slot, c.value, c.negated) for c in extract_claims(text, speaker)}


def verdict(a, b, cos=0.5):
    sig = minhash([a["text"], b["text"]])
    return duplicate_verdict(
        a, b, cos=cos, jaccard=jaccard(sig[0], sig[1]),
        claims_a=extract_claims(a["text"], a["source"]["speaker"]),
        claims_b=extract_claims(b["text"], b["source"]["speaker"]), cfg=DedupConfig())


def relation(old, new, cos=0.7) -> Relation:
    return relate(old, new, cos=cos,
                  claims_old=extract_claims(old["text"], old["source"]["speaker"]),
                  claims_new=extract_claims(new["text"], new["source"]["speaker"]))


# -- exact keys and word counts ----------------------------------------------------------

def test_exact_key_ignores_case_spacing_and_punctuation():
    k = exact_key("I work at Google.")
    assert len(k) == 16
    assert k == exact_key("i  work at google") == exact_key("I work at GOOGLE!!!")
    assert k == exact_key("I work at Ｇｏｏｇｌｅ")  # NFKC full-width letters
    assert k != exact_key("I work at Apple.")


def test_word_count():
    assert word_count("I'm at Google, ok?") == 4
    assert word_count("lol 😂") == 1
    assert word_count("") == 0


_punct = st.sampled_from(list(".,!?;:'\"()-…¡¿«»"))


@FAST
@given(st.lists(st.text(alphabet=st.characters(categories=["Ll", "Lu", "Nd"]), min_size=1,
                        max_size=8), min_size=1, max_size=8),
       st.data())
def test_exact_key_invariant_under_case_whitespace_punctuation(ws, data):
    base = " ".join(ws)
    noisy = ""
    for w in ws:
        sep = data.draw(st.sampled_from([" ", "  ", "\t", "\n ", " "]))
        p = data.draw(st.lists(_punct, max_size=2))
        up = w.upper()  # "ı".upper() is "I", which casefolds to "i": no case pair
        noisy += sep + (up if up.casefold() == w.casefold() and data.draw(st.booleans())
                        else w)
        noisy += "".join(p)
    assert exact_key(noisy) == exact_key(base)


# -- MinHash -----------------------------------------------------------------------------

def _true_jaccard(a: str, b: str) -> float:
    def bigrams(t):
        w = t.casefold().replace(",", " ").replace("!", " ").split()
        return set(zip(w, w[1:], strict=False)) if len(w) > 1 else {tuple(w)}

    sa, sb = bigrams(a), bigrams(b)
    assert shingle_jaccard(a, b) == len(sa & sb) / len(sa | sb)
    return len(sa & sb) / len(sa | sb)


def test_minhash_shapes_and_edge_texts():
    sig = minhash(["I work at Google as an engineer", "", "hello", "hello", "", "x y"])
    assert sig.shape == (6, 64) and sig.dtype == np.uint32
    assert (sig[2] == sig[3]).all() and (sig[1] == sig[4]).all()
    assert jaccard(sig[1], sig[2]) < 0.2 and jaccard(sig[0], sig[5]) < 0.2
    assert minhash([]).shape == (0, 64)
    assert minhash(["a b c"], num_perm=128).shape == (1, 128)


def test_minhash_batch_equals_single_and_is_stable():
    texts = ["The quarterly report is due on Friday", "We met at the old station", "ok"]
    batch = minhash(texts)
    for i, t in enumerate(texts):
        assert (minhash([t])[0] == batch[i]).all()
    # signatures go into the persistent candidate index: they must never drift
    assert minhash(["hello world"])[0][:4].tolist() == _PINNED


_PINNED = minhash(["hello world"])[0][:4].tolist()


def test_minhash_separates_near_from_different():
    a = "The quarterly report for the marketing team is due next Friday afternoon"
    near = "the quarterly report for the marketing team is due next friday afternoon!!"
    edit = "The quarterly report for the marketing team is due on next Friday afternoon"
    other = "I adopted a kitten from the shelter last weekend and named her Luna"
    s = minhash([a, near, edit, other], num_perm=256)
    assert jaccard(s[0], s[1]) == 1.0
    assert abs(jaccard(s[0], s[2]) - _true_jaccard(a, edit)) < 0.12
    assert jaccard(s[0], s[3]) < 0.1


_word = st.sampled_from("the a cat dog sat on mat and ran to park i we you see big red "
                        "blue old new house car tree went home fast slow".split())


@settings(deadline=None, max_examples=60)
@given(st.lists(_word, min_size=0, max_size=25), st.lists(_word, min_size=0, max_size=25))
def test_minhash_estimates_true_shingle_jaccard(wa, wb):
    a, b = " ".join(wa), " ".join(wb)
    sig = minhash([a, b, a], num_perm=256)
    assert (sig[0] == sig[2]).all()  # identical texts, identical signatures
    # 256 permutations: standard error <= 0.031; 0.16 is over 5 sigma
    assert abs(jaccard(sig[0], sig[1]) - _true_jaccard(a, b)) <= 0.16


def test_band_keys_and_jaccard_rows():
    texts = ["The quarterly report for the marketing team is due next Friday afternoon",
             "The quarterly report for the marketing team is due next Friday afternoon!",
             "I adopted a kitten from the shelter last weekend and named her Luna"]
    sig = minhash(texts)
    keys = band_keys(sig)
    assert keys.shape == (3, 16) and keys.dtype == np.uint64
    assert (keys[0] == keys[1]).all()
    assert not set(keys[0].tolist()) & set(keys[2].tolist())
    # the band index is mixed in: equal band contents in different bands differ
    flat = np.zeros((1, 64), dtype=np.uint32)
    k = band_keys(flat)[0]
    assert len(set(k.tolist())) == 16
    est = jaccard_rows(sig, np.array([0, 0]), np.array([1, 2]))
    assert est.tolist() == pytest.approx([jaccard(sig[0], sig[1]), jaccard(sig[0], sig[2])])
    with pytest.raises(ValueError):
        band_keys(sig[:, :8], bands=16)


# -- value signals and keywords -------------------------------------------------------------

def test_value_signals_numbers_dates_names_negation():
    v = value_signals("I moved to Berlin on May 5th, 2023 with Emma and 2 cats.")
    assert v["dates"] == ["2023-05-05"] and v["numbers"] == ["2"]
    assert v["names"] == ["berlin", "emma"] and v["negated"] is False
    assert value_signals("I'm thirty-four")["numbers"] == ["34"]
    assert value_signals("I paid $1,200")["numbers"] == ["1200"]
    assert value_signals("May I ask how you are?")["dates"] == []  # the verb, not the month
    assert value_signals("I don't like sushi anymore")["negated"] is True
    assert value_signals("No, I live in New York.") == {
        "numbers": [], "dates": [], "names": ["new york"], "negated": False}
    assert value_signals("Hey Emma! Yesterday we met.")["names"] == ["emma"]


def test_changed_signals_modes():
    a = value_signals("We meet at 5pm near the station")
    b = value_signals("We meet at 6pm near the station")
    c = value_signals("We meet near the station")
    assert changed_signals(a, b) == ["numbers"]
    assert changed_signals(a, c) == ["numbers"]  # dedup: one side pins a value
    assert changed_signals(a, c, both=True) == []  # conflicts: both must have one
    # lower-cased chat drops capitals: a missing name is not a changed name
    assert changed_signals(value_signals("I met Emma"), value_signals("i met emma")) == []


def test_keywords():
    kw = keywords("Morning! I'm Alice. I just started a new job as a data engineer at "
                  "Northwind Logistics in Rotterdam on 2024-03-02.")
    assert kw[:4] == ["alice", "northwind logistics", "rotterdam", "2024-03-02"]
    assert "engineer" in kw and "just" not in kw and "i'm" not in kw
    assert keywords("I don't like sushi anymore") == ["sushi"]
    assert keywords("lol ok thanks!") == []
    assert len(keywords("one two three four five six seven eight nine ten apples pears "
                        "plums kiwis limes figs dates grapes melons", k=5)) == 5


# -- claims ---------------------------------------------------------------------------------

CLAIMS = [
    ("I work at Google.", {("alice", "employer", "google", False)}),
    ("My employer is Google", {("alice", "employer", "google", False)}),
    ("I've been working for Acme Corp since 2019", {("alice", "employer", "acme corp", False)}),
    ("I don't work at Google anymore.", {("alice", "employer", "google", True)}),
    ("I no longer work for Google", {("alice", "employer", "google", True)}),
    ("I left Google last month.", {("alice", "employer", "google", True)}),
    ("I quit my job at Google", {("alice", "employer", "google", True)}),
    ("I used to work at Google", {("alice", "employer", "google", True)}),
    ("I just started at Microsoft!", {("alice", "employer", "microsoft", False)}),
    ("I just started a new job as a data engineer at Northwind Logistics in Rotterdam.",
     {("alice", "employer", "northwind logistics", False),
      ("alice", "role", "data engineer", False)}),
    ("I'm a nurse.", {("alice", "role", "nurse", False)}),
    ("I got promoted to senior manager", {("alice", "role", "senior manager", False)}),
    ("I live in Paris", {("alice", "home", "paris", False)}),
    ("I moved to Berlin last year", {("alice", "home", "berlin", False)}),
    ("I live in a small town in Ohio", {("alice", "home", "ohio", False)}),
    ("I am no longer living in Paris", {("alice", "home", "paris", True)}),
    ("I'm from Ohio originally", {("alice", "origin", "ohio", False)}),
    ("I'm 34", {("alice", "age", "34", False)}),
    ("Im 34 years old lol", {("alice", "age", "34", False)}),
    ("I just turned thirty-five!", {("alice", "age", "35", False)}),
    ("I'm married", {("alice", "relationship", "married", False)}),
    ("I'm not married", {("alice", "relationship", "married", True)}),
    ("I got married to Emma last year", {("alice", "relationship", "married", False),
                                         ("alice", "partner", "emma", False)}),
    ("My dog is called Max", {("alice", "pet", "dog max", False)}),
    ("I have a cat named Luna", {("alice", "pet", "cat luna", False)}),
    ("I don't have a dog anymore", {("alice", "pet", "dog", True)}),
    ("I drive a Tesla", {("alice", "vehicle", "tesla", False)}),
    ("My phone number is 555-123-4567", {("alice", "phone", "5551234567", False)}),
    ("My email is Bob@Example.com.", {("alice", "email", "bob@example.com", False)}),
    ("My favourite colour is blue", {("alice", "favorite color", "blue", False)}),
    ("Pizza is my favorite food", {("alice", "favorite food", "pizza", False)}),
    ("I study biology at Stanford", {("alice", "studies", "biology", False),
                                     ("alice", "school", "stanford", False)}),
    ("I'm vegetarian", {("alice", "diet", "vegetarian", False)}),
    ("I'm allergic to peanuts and shellfish", {("alice", "allergy", "peanuts", False),
                                              ("alice", "allergy", "shellfish", False)}),
    ("My hobby is painting", {("alice", "hobby", "painting", False)}),
    ("I love hiking and camping", {("alice", "likes", "hiking", False),
                                   ("alice", "likes", "camping", False)}),
    ("I hate cilantro", {("alice", "likes", "cilantro", True)}),
    ("My birthday is March 5", {("alice", "birthday", "march 5", False)}),
    ("I have two kids", {("alice", "children", "2", False)}),
    ("I love to travel", {("alice", "likes", "travel", False)}),
    ("My dog's name is Rex", {("alice", "pet", "dog rex", False)}),
    ("I adopted two cats named Tom and Jerry", {("alice", "pet", "cat tom", False),
                                                ("alice", "pet", "cat jerry", False)}),
    ("My phone is +1 (555) 123-4567", {("alice", "phone", "+15551234567", False)}),
    # third person
    ("My sister works at Apple", {("alice's sister", "employer", "apple", False)}),
    ("My sister Emma lives in London", {("emma", "home", "london", False)}),
    ("Bob works at Google", {("bob", "employer", "google", False)}),
    ("Yesterday Bob moved to Paris", {("bob", "home", "paris", False)}),
    ("Mom lives in Ohio", {("alice's mom", "home", "ohio", False)}),
    ("My sister's name is Emma", {("alice's sister", "name", "emma", False)}),
]


@pytest.mark.parametrize(("text", "expected"), CLAIMS, ids=[t for t, _ in CLAIMS])
def test_extract_claims(text, expected):
    assert claims(text) == expected


NO_CLAIMS = [
    "I worked at Google for years.",  # a past state says nothing about now
    "I joined a book club",  # "joined" needs a proper-noun employer
    "I work at night", "I work from home", "I'm a big fan of jazz", "I drive a lot",
    "I live in a small apartment", "I'm 100% sure", "I'm 6 feet tall", "I'd like a coffee",
    "I love you", "I go to the gym", "I'm going to Paris next week",
    "If I lived in Paris I'd be happy", "Do you work at Google?", "Did you know I'm 34?",
    "I wish I worked at Google", "My job is great", "My point is that we should go",
    "My car is making noise", "He works at Google", "The company I work at is Google",
    "Make love not war", "Thanks so much!", "lol", "", "I live in the moment",
    "I live in fear of spiders", "I moved to tears", "My name is not important",
    "I like to think so", "I have a dog walker coming", "I play it safe",
]


@pytest.mark.parametrize("text", NO_CLAIMS)
def test_no_claims(text):
    assert claims(text) == set()


def test_claim_subjects_and_speakers():
    assert claims("I work at Google", "  CAROLINE ") == {("caroline", "employer", "google",
                                                          False)}
    assert claims("I work at Google", None) == {("", "employer", "google", False)}
    assert claims("My sister works at Apple", None) == {("my sister", "employer", "apple",
                                                         False)}
    # a question clause is dropped, the statement before it kept
    assert claims("I live in Paris, what about you?") == {("alice", "home", "paris", False)}


def test_multi_valued_slots():
    assert is_multi_valued("pet") and is_multi_valued("likes colour") and is_multi_valued(
        "hobby")
    assert not is_multi_valued("employer") and not is_multi_valued("favorite color")


_fragments = st.sampled_from([
    "I", "my", "My sister", "Bob", "work at", "live in", "don't", "anymore", "is", "a",
    "Google", "'s", "named", "favorite", "?", ",", ".", "am", "not", "34", "years old",
    "love", "moved to", "the", "dog", "called", "used to", "no longer", "é", "😂", "\n",
])


@FAST
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.one_of(_fragments, st.text(max_size=6)), max_size=25)
                 .map(" ".join)),
       st.one_of(st.none(), st.text(max_size=10)))
def test_extract_claims_never_raises(text, speaker):
    out = extract_claims(text, speaker)
    assert all(isinstance(c, Claim) and c.slot and c.value for c in out)


# -- duplicate verdicts ----------------------------------------------------------------------

def test_exact_and_paraphrase_duplicates():
    v = verdict(rec("I work at Google."), rec("i work at google", session="s2"))
    assert v.kind == "exact" and v.score == 1.0
    v = verdict(rec("I work at Google."), rec("My employer is Google", session="s2"))
    assert v.kind == "slot" and v.signals["slots"] == ["employer"]


def test_near_duplicate_needs_length_and_no_word_swap():
    a = rec("The quarterly report for the marketing team is due next Friday afternoon")
    typo = rec("The quartely report for the marketing team is due next Friday afternoon")
    swap = rec("The quarterly report for the sales team is due next Friday afternoon")
    assert verdict(a, typo).kind == "near"
    assert verdict(a, swap).kind is None
    assert substituted(a["text"], swap["text"]) == ["marketing", "sales"]
    short = verdict(rec("see you at the park"), rec("see you at the park later"))
    assert short.kind is None  # 5 words: too short to merge on overlap


def test_filler_is_not_merged_across_speakers_or_sessions():
    for other in (rec("thanks!", speaker="Bob"), rec("Thanks!", session="s2")):
        v = verdict(rec("thanks!"), other)
        assert v.kind is None and v.signals["gate"] == "filler"
    assert verdict(rec("lol"), rec("lol")).kind == "exact"  # a double send
    assert verdict(rec("ok", session=""), rec("ok", session="")).kind is None


def test_gates_block_merges():
    v = verdict(rec("I'm so tired of this weather"), rec("I'm so tired of this weather",
                                                         speaker="Bob"))
    assert v.kind is None and v.signals["gate"] == "speaker"
    fact = "The library closes early on public holidays"
    assert verdict(rec(fact), rec(fact, speaker="Bob")).kind == "exact"  # no "I": one fact
    v = verdict(rec("We are meeting at 5pm near the old station on Friday"),
                rec("We are meeting at 6pm near the old station on Friday"), cos=0.99)
    assert v.kind is None and v.signals["changed"] == ["numbers"]
    v = verdict(rec("I like sushi a lot"), rec("I don't like sushi a lot"), cos=0.95)
    assert v.kind is None and "negation" in v.signals["changed"]
    v = verdict(rec("I went for a run today, it was lovely"),
                rec("I went for a run today, it was lovely", session="s2"))
    assert v.kind is None and v.signals["gate"] == "deictic time"
    v = verdict(rec("I work at Google"), rec("I work at Google", ns="other"))
    assert v.kind is None and v.signals["gate"] == "namespace"


def test_semantic_and_ambiguous_bands():
    a, b = rec("I really enjoy long walks along the beach"), rec(
        "Long walks along the beach are something I enjoy")
    assert verdict(a, b, cos=0.95).kind == "semantic"
    v = verdict(a, b, cos=0.88)
    assert v.kind is None and v.ambiguous
    v = verdict(a, b, cos=0.5)
    assert v.kind is None and not v.ambiguous


# -- supersession ---------------------------------------------------------------------------

def test_supersedes_on_changed_value_or_negation():
    r = relation(rec("I work at Google."), rec("I just joined Apple!", session="s2"))
    assert r.kind == "supersedes" and r.signals["slot"] == "employer"
    assert r.signals["old"] == "google" and r.signals["new"] == "apple"
    r = relation(rec("I live in Paris"), rec("I no longer live in Paris"))
    assert r.kind == "supersedes" and r.signals["change"] == "negation"
    r = relation(rec("I have a dog named Max"), rec("I don't have a dog anymore"))
    assert r.kind == "supersedes" and r.signals["slot"] == "pet"
    assert relation(rec("I'm 34"), rec("I just turned 35")).kind == "supersedes"
    assert relation(rec("My favorite color is blue"),
                    rec("My favorite color is green")).kind == "supersedes"


def test_never_supersedes_other_subjects_or_namespaces():
    old = rec("I work at Google.")
    assert relation(old, rec("My sister works at Apple")).kind is None
    assert relation(old, rec("I work at Apple", speaker="Bob")).kind is None
    assert relation(old, rec("I just joined Apple!", ns="other")).kind is None


def test_multi_valued_and_compatible_values_do_not_supersede():
    assert relation(rec("I have a dog named Max"), rec("I have a cat named Luna")).kind is None
    assert relation(rec("I love hiking"), rec("I love swimming")).kind is None
    assert relation(rec("I work at Google"), rec("I work at Google Cloud")).kind is None
    assert relation(rec("I left Google"), rec("I work at Apple")).kind is None


def test_contradicts_without_slot_is_only_a_link():
    r = relation(rec("We have two dogs at home"), rec("We have three dogs at home"))
    assert r.kind == "contradicts" and r.signals["changed"] == ["numbers"]
    low = relation(rec("We have two dogs at home"), rec("We have three dogs at home"), cos=0.4)
    assert low.kind is None
    other = relation(rec("We have two dogs at home"),
                     rec("We have three dogs at home", speaker="Bob"))
    assert other.kind is None
    topic = relation(rec("We watched 2 movies on Sunday"),
                     rec("We bought 3 plants for the balcony"), cos=0.65)
    assert topic.kind is None  # a changed number on another topic is no conflict


def test_slot_keys():
    cs = extract_claims("I work at Google and I live in Paris", "Alice")
    assert slot_keys("ns1", cs) == ["ns1\x1falice\x1femployer", "ns1\x1falice\x1fhome"]
    assert slot_keys("ns1", []) == []


_subjects = st.sampled_from(["alice", "bob", "alice's sister", "", "emma"])
_slots = st.sampled_from(["employer", "home", "pet", "likes", "age", "favorite color"])
_values = st.sampled_from(["google", "apple", "paris", "dog max", "dog", "34", "blue"])
_claim = st.builds(Claim, _subjects, _slots, _values, st.booleans())


@FAST
@given(st.lists(_claim, max_size=4), st.lists(_claim, max_size=4),
       st.sampled_from(["a", "b"]), st.sampled_from(["a", "b"]),
       st.floats(min_value=-1, max_value=1), st.sampled_from([t for t, _ in CLAIMS[:20]]),
       st.sampled_from([t for t, _ in CLAIMS[20:]]))
def test_relate_never_supersedes_across_namespaces_or_subjects(co, cn, ns_o, ns_n, cos, to,
                                                              tn):
    r = relate(rec(to, ns=ns_o), rec(tn, ns=ns_n), cos=cos, claims_old=co, claims_new=cn)
    if r.kind == "supersedes":
        assert ns_o == ns_n
        assert r.signals["subject"] in {c.subject for c in co} & {c.subject for c in cn}
    if ns_o != ns_n or not ({c.subject for c in co} & {c.subject for c in cn}):
        assert r.kind != "supersedes"
    if co and cn and not ({c.subject for c in co} & {c.subject for c in cn}):
        assert r.kind is None


# -- oblique statements: frames, gazetteers, change statements --------------------------------

A = "alice"
FRAME_CLAIMS = [
    # role
    ("Being a paramedic means I never sleep properly.", {(A, "role", "paramedic", False)}),
    ("Honestly, being a night nurse pays the bills.", {(A, "role", "night nurse", False)}),
    ("As a pharmacist, I see a lot of flu cases.", {(A, "role", "pharmacist", False)}),
    ("As a plumber - I get calls at all hours.", {(A, "role", "plumber", False)}),
    ("Started my second week as a barista!", {(A, "role", "barista", False)}),
    ("Retrained as an electrician last year.", {(A, "role", "electrician", False)}),
    ("Big news: I'm a certified electrician now!",
     {(A, "role", "certified electrician", False)}),
    ("Still a librarian, nothing new.", {(A, "role", "librarian", False)}),
    # age
    ("At 29 I finally understand taxes.", {(A, "age", "29", False)}),
    ("At 30, I know what I want.", {(A, "age", "30", False)}),
    ("Being 62 hasn't slowed me down.", {(A, "age", "62", False)}),
    ("Turned forty last Sunday!", {(A, "age", "40", False)}),
    ("Can you believe I'm 40 now?", {(A, "age", "40", False)}),
    # employer
    ("My colleagues at Northwind are lovely.", {(A, "employer", "northwind", False)}),
    ("Work at Halcyon Labs has been intense.", {(A, "employer", "halcyon labs", False)}),
    ("I'm still with Fabrikam, nothing has changed at the job.",
     {(A, "employer", "fabrikam", False)}),
    ("I switched jobs, so I'm at Tailspin now.", {(A, "employer", "tailspin", False)}),
    ("I left Contoso in March and joined Fabrikam.",
     {(A, "employer", "contoso", True), (A, "employer", "fabrikam", False)}),
    ("I quit Globex and joined Initech.",
     {(A, "employer", "globex", True), (A, "employer", "initech", False)}),
    ("Handed in my notice at Litware today.", {(A, "employer", "litware", True)}),
    # home
    ("Living in Lisbon has been a dream.", {(A, "home", "lisbon", False)}),
    ("Home for me is Nairobi now.", {(A, "home", "nairobi", False)}),
    ("We relocated to Porto over the summer.", {(A, "home", "porto", False)}),
    ("I moved from Leeds to Bristol in May.",
     {(A, "home", "leeds", True), (A, "home", "bristol", False)}),
    # diet
    ("I switched to a pescatarian diet.", {(A, "diet", "pescatarian", False)}),
    ("I've gone vegan since January.", {(A, "diet", "vegan", False)}),
    ("I eat kosher at home.", {(A, "diet", "kosher", False)}),
    ("I eat halal, so I skip the pepperoni.", {(A, "diet", "halal", False)}),
    ("Being dairy-free is annoying at restaurants.", {(A, "diet", "dairy-free", False)}),
    ("Since I'm gluten free, bread is out.", {(A, "diet", "gluten-free", False)}),
    ("No longer vegetarian, I eat fish again.", {(A, "diet", "vegetarian", True)}),
    # partner
    ("Mira and I have been together since college.", {(A, "partner", "mira", False)}),
    ("Theo and I split up last spring.", {(A, "partner", "theo", True)}),
    ("I've been seeing Priya for a few months now.", {(A, "partner", "priya", False)}),
    ("My girlfriend Ana just got promoted.", {(A, "partner", "ana", False)}),
    ("My new boyfriend Luis cooks a mean curry.", {(A, "partner", "luis", False)}),
    ("Kofi, my husband, is a chef.", {(A, "partner", "kofi", False)}),
    ("My wife is Lena.", {(A, "partner", "lena", False)}),
    ("Things ended with Marcus last month.", {(A, "partner", "marcus", True)}),
    ("I've started seeing someone: Jonah.", {(A, "partner", "jonah", False)}),
    ("Still with Dev, five years strong.", {(A, "partner", "dev", False)}),
    ("My ex Jordan called me yesterday.", {(A, "partner", "jordan", True)}),
    ("I'm in a relationship with Sam.", {(A, "partner", "sam", False)}),
    # car
    ("I sold my Mazda 3 and bought a Kia Sportage.",
     {(A, "vehicle", "mazda 3", True), (A, "vehicle", "kia sportage", False)}),
    ("I've had my Toyota RAV4 since 2015.", {(A, "vehicle", "toyota rav4", False)}),
    ("Traded my old Jeep for a Tesla.",
     {(A, "vehicle", "jeep", True), (A, "vehicle", "tesla", False)}),
    ("My Audi A4 is in the shop again.", {(A, "vehicle", "audi a4", False)}),
    ("Picked up a used Honda Fit yesterday.", {(A, "vehicle", "honda fit", False)}),
    ("The Hyundai Ioniq I drive barely needs charging.",
     {(A, "vehicle", "hyundai ioniq", False)}),
    ("My Volvo got stolen.", {(A, "vehicle", "volvo", True)}),
    # favourite food
    ("If I could only eat one dish for the rest of my life, it would be ramen.",
     {(A, "favorite food", "ramen", False)}),
    ("Nothing beats a good bowl of pho.", {(A, "favorite food", "pho", False)}),
    ("I'm obsessed with dumplings lately, they're my favourite food.",
     {(A, "favorite food", "dumplings", False)}),
    ("My new favourite food is shakshuka.", {(A, "favorite food", "shakshuka", False)}),
    ("Curry has replaced pizza as my favourite.",
     {(A, "favorite food", "curry", False), (A, "favorite food", "pizza", True)}),
    ("I love tacos more than anything.", {(A, "favorite food", "tacos", False)}),
    # hobby
    ("My new hobby is bouldering.", {(A, "hobby", "bouldering", False)}),
    ("I got into pottery over lockdown.", {(A, "hobby", "pottery", False)}),
    ("I gave up knitting and took up embroidery.",
     {(A, "hobby", "knitting", True), (A, "hobby", "embroidery", False)}),
    ("Sundays are for gardening.", {(A, "hobby", "gardening", False)}),
    ("Chess, my favourite hobby, keeps me sharp.", {(A, "hobby", "chess", False)}),
    ("In my spare time I go kayaking.", {(A, "hobby", "kayaking", False)}),
    ("Photography is my main hobby these days.", {(A, "hobby", "photography", False)}),
    # pets
    ("Our beagle chewed my shoes.", {(A, "pet", "beagle", False)}),
    ("My cat passed away last week.", {(A, "pet", "cat", True)}),
    ("We adopted a kitten named Miso.", {(A, "pet", "cat miso", False)}),
    # other people keep their own subject
    ("My sister Ana's dog is huge.", {("ana", "pet", "dog", False)}),
    ("Raj has been at Globex for years.", {("raj", "employer", "globex", False)}),
    ("My brother's job as an accountant is boring.",
     {("alice's brother", "role", "accountant", False)}),
    ("Zoe, who is 41, runs a bakery.", {("zoe", "age", "41", False)}),
    ("Did I tell you my cousin moved to Oslo?", {("alice's cousin", "home", "oslo", False)}),
    ("Being a nurse, my mom works nights.", {("alice's mom", "role", "nurse", False)}),
    ("My friend Ola is big on climbing.", {("ola", "hobby", "climbing", False)}),
]


@pytest.mark.parametrize(("text", "expected"), FRAME_CLAIMS, ids=[t for t, _ in FRAME_CLAIMS])
def test_extract_oblique_claims(text, expected):
    assert claims(text) == expected


FRAME_NO_CLAIMS = [
    "Being a teacher must be exhausting.", "As a kid, I loved trains.", "At 7 I have a meeting.",
    "At 18 I moved out.", "Living in the moment is key.", "Home is where the heart is.",
    "My friend at Google says hi.", "I met my colleagues at Nando's for lunch.",
    "Sam and I went hiking.", "Jo and I broke the vase.", "Sam and I split the bill.",
    "Sam and I are together at the mall.", "Sam and I are done with the project.",
    "I'm seeing Dr. Patel tomorrow.", "I'm seeing Emma for lunch.",
    "I've been seeing Kim for two years, she's a great therapist.",
    "Hi Sam, my partner says hi!", "I sold my old bike.", "I'd love a Tesla someday.",
    "If I were vegan I'd miss cheese.", "Would you ever go keto?", "I quit smoking.",
    "I got into trouble at school.", "Nothing beats a lazy Sunday.",
    "Weekends are for sleeping in.", "Weekends are for chess for my brother.",
    "I'm at Starbucks now.", "I have a meeting with Acme tomorrow.",
    "Things ended with the contract.", "Rosa and I are going to the movies.",
    "Can you believe it's raining?", "The Honda I rented was fine.",
    "My favourite food? Hard to say.", "I wish I had a Porsche.",
    "Maybe I'll go vegan next year.", "I'm thinking of picking up chess.",
    "Do you still drive a Ford?", "My horse painting won a prize.",
    "We saw a beagle at the park.", "I'm planning to move to Denver.", "Being 30 would be nice.",
    "I work with Emma on Tuesdays.", "My old Volvo still runs great.",
    "Chess is a hobby for nerds.", "I eat pizza every day.", "We moved to a new office.",
    "Picked up a lot of groceries.", "I took up a lot of your time.",
]


@pytest.mark.parametrize("text", FRAME_NO_CLAIMS)
def test_no_oblique_claims_about_the_speaker(text):
    assert {c for c in claims(text) if c[0] == A} == set()


def test_claims_reexported_from_signals():
    from memstack.core.consolidate import claims as claims_mod
    from memstack.core.consolidate import signals

    assert signals.Claim is claims_mod.Claim and signals.extract_claims is claims_mod.extract_claims
    assert signals.is_multi_valued is claims_mod.is_multi_valued


ANSWERS = [
    ("How old are you now?", "31, sadly.", {(A, "age", "31", False)}),
    ("What do you drive these days?", "A Honda Civic.", {(A, "vehicle", "honda civic", False)}),
    ("Any hobbies lately?", "Mostly salsa dancing.", {(A, "hobby", "salsa dancing", False)}),
    ("What do you do for a living?", "Still an accountant.", {(A, "role", "accountant", False)}),
    ("Where are you living now?", "In Seattle.", {(A, "home", "seattle", False)}),
    ("Where do you work these days?", "At Vandelay Imports.",
     {(A, "employer", "vandelay imports", False)}),
    ("Are you seeing anyone?", "Still with Luca.", {(A, "partner", "luca", False)}),
    ("What's your favourite food?", "Definitely lasagna :)",
     {(A, "favorite food", "lasagna", False)}),
    ("Do you have any pets?", "A golden retriever.", {(A, "pet", "golden retriever", False)}),
    ("Do you follow any diet?", "Keto, mostly.", {(A, "diet", "keto", False)}),
    # not about the speaker, not terse, or not an answer of the asked type
    ("How old is your dog?", "Three.", set()),
    ("Where does your sister work?", "At Google.", set()),
    ("Is Sam still at Google?", "At Google.", set()),
    ("How old are you?", "Old enough lol", set()),
    ("Do you have pets?", "No pets.", set()),
    ("What do you do for fun?", "Netflix mostly.", set()),
    ("What's your job?", "I'd rather not say.", set()),
    ("Nice weather today.", "27, sadly.", set()),
]


@pytest.mark.parametrize(("question", "answer", "expected"), ANSWERS,
                         ids=[f"{q} {a}" for q, a, _ in ANSWERS])
def test_terse_answers_take_their_slot_from_the_question(question, answer, expected):
    got = {(c.subject, c.slot, c.value, c.negated)
           for c in extract_claims(answer, "Alice", question)}
    assert got == expected


def test_supersedes_oblique_statements():
    pairs = [("Being a dentist is more tiring than people think.",
              "I retrained as a nurse last year."),
             ("At 41 I finally feel settled.", "Turned 42 yesterday!"),
             ("Work at Globex keeps me busy.", "I left Globex and joined Initech."),
             ("Mira and I have been together for years.", "Mira and I broke up in June."),
             ("My Volvo XC40 needs new tires.", "I sold my Volvo XC40 and bought a Golf."),
             ("I'm really into pottery.", "I quit pottery and got into chess."),
             ("Sundays are for pottery.", "I gave up pottery."),
             ("Being keto makes eating out tricky.", "I switched to a vegan diet."),
             ("Nothing beats sushi, it's my favourite.", "My new favourite food is ramen.")]
    for old, new in pairs:
        r = relation(rec(old), rec(new, session="s2"))
        assert r.kind == "supersedes", (old, new, r)
    # about someone else, or a second hobby: nothing is closed
    assert relation(rec("Being a dentist is tiring."),
                    rec("My sister retrained as a nurse.")).kind is None
    assert relation(rec("I'm really into pottery."), rec("I got into chess.")).kind is None


def test_subsumed_statement_merges_into_the_fuller_one():
    plain = rec("I'm 34.")
    chatty = rec("At 34 I finally feel like I know what I'm doing, haha.", session="s2")
    v = verdict(plain, chatty)
    assert v.kind == "slot" and v.signals["subsumed"] == "a"
    # a change statement says the new value too; the plain one adds nothing to it
    v = verdict(rec("I left Globex and joined Initech last month."),
                rec("I work at Initech.", session="s2"))
    assert v.kind == "slot" and v.signals["subsumed"] == "b"
    # both say more than the fact: two memories, not one
    v = verdict(rec("Being 34 means my knees hurt when it rains."),
                rec("At 34 I finally feel like I know what I'm doing.", session="s2"))
    assert v.kind is None
    # the shorter one pins a number the longer lacks, or is an event of its own day
    assert verdict(rec("I'm 34 and have 2 cats."),
                   rec("At 34 I finally feel like I know what I'm doing, honestly.")).kind \
        is None
    assert verdict(rec("My partner Rosa made dinner tonight."),
                   rec("Rosa and I have been together for years, she is wonderful.",
                       session="s2")).kind is None
    # different speakers never merge their first-person facts
    assert verdict(rec("I'm 34."), rec("At 34 I finally feel settled.", speaker="Bob")).kind \
        is None
