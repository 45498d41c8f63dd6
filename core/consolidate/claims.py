"""(subject, slot, value) claims of a chat turn, by rules: what supersession and slot
duplicates compare.

A rule table per slot matches the verb phrase after a subject ("I", "my sister", "Bob") or
the noun phrase after a possessive ("my employer is ..."); frames catch the oblique ways
people state the same facts ("Being a nurse is ...", "At 41 I ...", "Sam and I have been
together ..."), and small gazetteers of closed classes (occupations, diets, hobbies, car
makes, dishes, pets) type the values that have no capital letter to go by. Precision comes
first: a missed claim is safe, a wrong one can close a true fact's validity.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from memstack.core.analyze import STOP_WORDS
from memstack.core.consolidate.signals import (
    _HAS_DIGIT,
    _NEG_WORDS,
    _NUMBER_WORDS,
    _NUMWORD,
    _PUNCT_SPACE,
    FILLER,
    NON_NAMES,
    _num_value,
)


@dataclass(frozen=True)
class Claim:
    """One statement of fact: subject's slot has value (or, negated, no longer has it)."""

    subject: str
    slot: str
    value: str
    negated: bool = False


# Slots a person has several values of at once: a differing value adds, never replaces.
MULTI_VALUED = frozenset("""
pet likes hobby allergy language child sister brother son daughter friend cousin aunt uncle
niece nephew grandchild colleague coworker neighbor roommate graduated
""".split())


def is_multi_valued(slot: str) -> bool:
    return slot in MULTI_VALUED or slot.startswith("likes")


_RELATIONS = {
    "sister": "sister", "brother": "brother", "mom": "mom", "mum": "mom", "mother": "mom",
    "mommy": "mom", "dad": "dad", "father": "dad", "daddy": "dad", "wife": "wife",
    "husband": "husband", "partner": "partner", "spouse": "spouse", "boyfriend": "boyfriend",
    "girlfriend": "girlfriend", "fiance": "fiance", "fiancé": "fiance", "fiancee": "fiance",
    "fiancée": "fiance", "son": "son", "daughter": "daughter", "friend": "friend",
    "best friend": "best friend", "roommate": "roommate", "boss": "boss", "manager": "boss",
    "coworker": "coworker", "co-worker": "coworker", "colleague": "colleague",
    "cousin": "cousin", "aunt": "aunt", "uncle": "uncle", "niece": "niece",
    "nephew": "nephew", "grandma": "grandma", "grandmother": "grandma", "grandpa": "grandpa",
    "grandfather": "grandpa", "neighbor": "neighbor", "neighbour": "neighbor",
    "stepmom": "stepmom", "stepdad": "stepdad", "kid": "child", "child": "child", "ex": "ex",
    "older sister": "sister", "younger sister": "sister", "big sister": "sister",
    "little sister": "sister", "older brother": "brother", "younger brother": "brother",
    "big brother": "brother", "little brother": "brother",
}
_REL_RE = "|".join(sorted((re.escape(r) for r in _RELATIONS), key=len, reverse=True))

_OCCUPATIONS = frozenset("""
nurse doctor physician surgeon dentist teacher professor lecturer tutor engineer developer
programmer designer architect lawyer attorney accountant banker manager director consultant
analyst scientist researcher chef cook baker waiter waitress bartender barista cashier clerk
salesman saleswoman salesperson driver pilot mechanic electrician plumber carpenter painter
artist musician singer writer author journalist editor photographer actor actress student
intern firefighter officer policeman policewoman cop soldier veteran farmer pharmacist
therapist psychologist psychiatrist counselor counsellor vet veterinarian librarian secretary
assistant receptionist administrator entrepreneur founder ceo cto cfo coo freelancer
contractor technician paramedic caregiver nanny coach trainer instructor janitor cleaner
guard economist mathematician physicist chemist biologist historian translator interpreter
sociologist dietitian nutritionist optometrist midwife surveyor realtor agent broker
recruiter marketer strategist supervisor lead principal dean tailor butcher florist
hairdresser barber stylist model dancer comedian producer animator illustrator blogger
youtuber streamer influencer investor trader auditor paralegal judge detective sheriff
sergeant captain lieutenant marine sailor welder machinist mover courier postman housewife
homemaker volunteer pastor priest rabbi imam minister missionary athlete footballer
practitioner hygienist carer housekeeper gardener landscaper roofer bricklayer builder
laborer labourer fisherman rancher zookeeper curator archivist coder sysadmin underwriter
actuary notary bookkeeper dispatcher conductor navigator astronaut lifeguard bouncer
mortician undertaker locksmith upholsterer jeweler jeweller glazier tiler decorator
""".split())
_OCC_SUFFIX = ("ist", "ician", "ologist", "grapher", "eer", "smith")
_OCC_SUFFIX_RE = re.compile(r"\w\w\w(?:ist|ician|grapher|eer|smith)\b", re.I).search

_PETS = {"dog": "dog", "puppy": "dog", "pup": "dog", "cat": "cat", "kitten": "cat",
         "kitty": "cat", "hamster": "hamster", "rabbit": "rabbit", "bunny": "rabbit",
         "parrot": "parrot", "bird": "bird", "fish": "fish", "goldfish": "goldfish",
         "turtle": "turtle", "tortoise": "tortoise", "snake": "snake", "lizard": "lizard",
         "horse": "horse", "pony": "horse", "guinea pig": "guinea pig", "ferret": "ferret",
         "gecko": "gecko", "budgie": "bird", "chinchilla": "chinchilla", "hedgehog": "hedgehog",
         "cockatiel": "cockatiel", "canary": "canary", "iguana": "iguana", "gerbil": "gerbil",
         "axolotl": "axolotl", "tarantula": "tarantula", "rat": "rat", "pig": "pig"}
# Breeds are pets too, and their own value ("our beagle" has a beagle, not just a dog).
_PETS.update((b, b) for b in """
golden retriever|labrador retriever|labrador|beagle|poodle|labradoodle|goldendoodle|corgi|
husky|pug|dachshund|bulldog|french bulldog|german shepherd|border collie|collie|chihuahua|
terrier|jack russell|yorkie|spaniel|cocker spaniel|shih tzu|greyhound|whippet|rottweiler|
doberman|great dane|pomeranian|schnauzer|sheepdog|pit bull|pitbull|dalmatian|maine coon|
siamese cat|ragdoll|sphynx|bengal cat|tabby|cockatoo|macaw|parakeet|bearded dragon
""".replace("\n", "").split("|"))
# Closed classes of world knowledge: a value of one of these types next to a first-person or
# slot cue is a claim even without a capital letter to go by. Entries are "|"-separated
# phrases; the value is the canonical form after "=" where spellings differ.
_DIETS = """
vegetarian|vegan|pescatarian|pescetarian=pescatarian|flexitarian|keto|ketogenic=keto|paleo|
halal|kosher|gluten-free|gluten free=gluten-free|dairy-free|dairy free=dairy-free|
lactose-free|lactose free=lactose-free|sugar-free|sugar free=sugar-free|plant-based|
plant based=plant-based|low-carb|low carb=low-carb|low-fat|low fat=low-fat|carnivore|
raw vegan|fruitarian|whole30|low-fodmap|low fodmap=low-fodmap|
"""
_HOBBIES = """
rock climbing|climbing|bouldering|hiking|trail running|running|jogging|cycling|biking|
mountain biking|swimming|surfing|skiing|snowboarding|skateboarding|kayaking|canoeing|rowing|
sailing|fishing|fly fishing|camping|backpacking|yoga|pilates|tai chi|martial arts|karate|
judo|jiu-jitsu|jiu jitsu=jiu-jitsu|taekwondo|boxing|kickboxing|fencing|archery|golf|tennis|
badminton|squash|table tennis|ping pong|pickleball|basketball|football|soccer|baseball|
softball|volleyball|rugby|cricket|hockey|ice skating|roller skating|dancing|salsa dancing|
salsa|ballet|ballroom dancing|tango|swing dancing|line dancing|chess|poker|bridge|
board games|video games|gaming|sudoku|crosswords|jigsaw puzzles|puzzles|reading|poetry|
creative writing|journaling|blogging|photography|film photography|painting|
watercolor painting|watercolour painting=watercolor painting|watercolor|watercolour=watercolor|
oil painting|drawing|sketching|calligraphy|pottery|ceramics|sculpting|woodworking|
woodcarving|wood carving=woodcarving|knitting|crocheting|crochet|sewing|quilting|embroidery|
cross-stitch|cross stitch=cross-stitch|weaving|origami|scrapbooking|candle making|
soap making|jewelry making|gardening|birdwatching|bird watching=birdwatching|birding|
stargazing|astronomy|baking|cooking|homebrewing|beekeeping|geocaching|metal detecting|
coin collecting|stamp collecting|model building|model trains|lego|singing|guitar|piano|
violin|drums|ukulele|cello|saxophone|flute|bass guitar|djing|podcasting|vlogging|coding|
volunteering|genealogy|meditation|magic tricks|juggling|parkour|scuba diving|diving|
snorkeling|paddleboarding|paddle boarding=paddleboarding|windsurfing|kitesurfing|
horse riding|horseback riding|triathlon|marathon running|weightlifting|powerlifting|
crossfit|bodybuilding|spinning|zumba|bowling|darts|billiards|skydiving|paragliding|
mountaineering|caving|foraging|birdwatching|trainspotting|improv|acting|theater|theatre|
karaoke|roller derby|frisbee|ultimate frisbee|disc golf|orienteering|rock hounding|
"""
_DISHES = """
sushi|sashimi|ramen|pho|pad thai|pad see ew|tom yum|green curry|massaman curry|khao soi|
tacos|burritos|burrito|enchiladas|quesadillas|nachos|tamales|empanadas|arepas|pupusas|
lasagna|lasagne=lasagna|spaghetti|carbonara|bolognese|pasta|pizza|risotto|gnocchi|ravioli|
tortellini|mac and cheese|paella|tapas|pierogi|pelmeni|borscht|blini|dumplings|gyoza|
dim sum|xiao long bao|bao|butter chicken|tikka masala|chicken tikka masala|curry|biryani|
dal|dhal|samosas|naan|falafel|hummus|shawarma|kebab|kebabs|gyros|moussaka|souvlaki|
burgers|burger|cheeseburgers|hot dogs|fried chicken|steak|barbecue|bbq|ribs|brisket|
pulled pork|meatloaf|pot roast|fish and chips|shepherd's pie|roast chicken|sunday roast|
goulash|schnitzel|bratwurst|fondue|raclette|crepes|croissants|quiche|ratatouille|
bouillabaisse|coq au vin|beef bourguignon|poutine|pancakes|waffles|french toast|
eggs benedict|bagels|grilled cheese|chili|gumbo|jambalaya|clam chowder|lobster|crab|
oysters|shrimp|salmon|ceviche|poke|bibimbap|kimchi|bulgogi|korean bbq|tteokbokki|
japchae|tempura|udon|soba|katsu|tonkatsu|okonomiyaki|takoyaki|teriyaki|yakitori|
onigiri|miso soup|banh mi|spring rolls|laksa|nasi goreng|rendang|satay|peking duck|
kung pao chicken|mapo tofu|hot pot|hotpot|fried rice|chow mein|lo mein|noodles|congee|
feijoada|jollof rice|injera|tagine|couscous|shakshuka|cheesecake|tiramisu|ice cream|
chocolate|brownies|apple pie|gelato|mochi|baklava|churros|chicken wings|wings|
meatballs|stew|pot pie|lamb chops|avocado toast|caesar salad|greek salad|mussels|
"""
_CAR_MAKES = """
toyota|honda|ford|tesla|subaru|volkswagen|vw|mazda|kia|volvo|nissan|bmw|audi|mercedes|
mercedes-benz|hyundai|chevrolet|chevy|jeep|dodge|gmc|lexus|acura|infiniti|porsche|ferrari|
lamborghini|fiat|mini cooper|jaguar|land rover|range rover|skoda|peugeot|renault|citroen|
opel|cadillac|lincoln|buick|chrysler|mitsubishi|suzuki|rivian|polestar|byd|alfa romeo|
maserati|bentley|saab|dacia|seat|genesis|cupra|lotus|aston martin|prius|
"""


def _gazetteer(spec: str) -> dict[str, tuple[tuple[tuple[str, ...], str], ...]]:
    """First word -> ((words, canonical value), ...) longest first."""
    out: dict[str, list[tuple[tuple[str, ...], str]]] = {}
    for entry in spec.replace("\n", "").split("|"):
        if entry:
            phrase, _, canon = entry.partition("=")
            ws = tuple(phrase.split())
            out.setdefault(ws[0], []).append((ws, canon or phrase))
    return {k: tuple(sorted(v, key=lambda e: -len(e[0]))) for k, v in out.items()}


_GAZ = {"diet": _gazetteer(_DIETS), "hobby": _gazetteer(_HOBBIES),
        "dish": _gazetteer(_DISHES), "car": _gazetteer(_CAR_MAKES)}
# Words that may follow a gazetteer value inside its noun phrase without changing it.
_GAZ_AFTER_OK = frozenset("""
recently lately again now nowadays these days this last every most all time times
""".split())


def _gaz_prefix(kind: str, ws: list[str], strict: bool = True) -> tuple[str, int] | None:
    """The gazetteer value the (casefolded) words start with, and how many words it
    takes; None when they start with none or (strict) the phrase goes on ("chess club")."""
    for phrase, canon in _GAZ[kind].get(ws[0] if ws else "", ()):
        n = len(phrase)
        if tuple(ws[:n]) == phrase:
            nxt = ws[n] if len(ws) > n else None
            if kind == "car" or not strict:
                return canon, n
            if nxt is None or nxt in _BOUNDARY or nxt in STOP_WORDS or nxt in _GAZ_AFTER_OK \
                    or nxt.endswith("ly"):
                return canon, n
            return None
    return None


# Makes that are also common words: a car only when capitalised.
_CAR_NEEDS_CAP = frozenset("ford dodge seat genesis lotus lincoln jaguar mini cupra smart "
                           "mercedes".split())
_MODEL = re.compile(r"(?:[A-Z][\w-]*|\d[\w-]*)$")


def _car(raw: str) -> str | None:
    """A car make from the gazetteer plus up to two model words that are capitalised or
    carry a digit ("Tesla Model 3", "Mazda CX-5", "honda"); None for anything else."""
    ws = _value_words(raw)
    hit = _gaz_prefix("car", [w for _, w in ws])
    if hit is None:
        return None
    value, n = hit
    if ws[0][1] in _CAR_NEEDS_CAP and not ws[0][0][0].isupper():
        return None  # "a seat", "a lotus", "dodge"
    model = []
    for orig, low in ws[n : n + 2]:
        if not _MODEL.match(orig) or low in NON_NAMES or low in _BOUNDARY:
            break
        model.append(low)
    return " ".join([value, *model])


_PET_RE = "|".join(sorted((re.escape(p) for p in _PETS), key=len, reverse=True))
_PET_TRIGGERS = " ".join(w for p in _PETS for w in (p, p + "s", p + "es", p[:-1] + "ies")
                         for w in w.split()[-1:])  # "golden retriever" by "retriever"

# Words that end a value: conjunctions, prepositions, time adverbs, fillers, verbs.
_BOUNDARY = frozenset("""
and but or because since so for as where which who whom whose that when while with until till
now anymore any these nowadays right currently today yesterday tomorrow tonight last next this
though too also lol haha lmao hehe in at on from to by after before again already yet although
if unless than about like just still full-time part-time full part every each most more even
ever really actually probably maybe either neither not no is are was were be been have has had
do does did will would can could should might must i we you he she they it me him her us them
there here ever since these those what how why over during throughout via
""".split())
_REJECT_START = frozenset("""
it this that these those there here you your yours u ur him her them me us something anything
everything nothing someone somebody anyone anybody everyone everybody one how what when where
why who which whether if so very really pretty super quite too kind sort like just not such
going gonna getting about lot lots bit all same way idea thought fact thing things stuff
home back there somewhere anywhere everywhere nowhere well many much
hearing seeing knowing getting having being doing making talking chatting telling saying
living working staying
think know say believe see hear imagine be have get go do make keep try help hope want need
""".split())
# Opinions and passing states: "my job is great" is no fact to keep or replace.
_EVALUATIVE = frozenset("""
sure fine ok okay good great amazing awesome nice cool fun hard tough busy crazy boring
interesting beautiful lovely perfect terrible awful bad horrible wonderful fantastic incredible
better worse best worst easy difficult important different special weird strange funny cute
sweet adorable huge big small tiny long short new young gorgeous stressful tiring exhausting
hectic wild insane tired happy sad excited glad sorry proud grateful thankful blessed lucky
ready able gone done over important unimportant irrelevant secret complicated private
""".split())
_GENERIC_PLACE = frozenset("""
town city village apartment house flat condo place area suburb suburbs neighborhood
neighbourhood dorm studio home countryside part state country building street region
small big same new old nice quiet tiny little office room desk floor space campus location
spot site unit team department bigger smaller larger
""".split())
# What people "live in" or are "moved to" that is no place ("the moment", "fear", "tears").
_NOT_PLACE = frozenset("""
moment moments fear denial hope peace harmony sin luxury poverty style past present now
future bubble head world dream dreams dreamland bliss misery pain hell heaven shame terror
limbo chaos comfort silence fantasy reality tears action anger sadness joy awe hiding
fear fashion debt love hopes doubt panic
""".split())
_NOT_EMPLOYER = frozenset("""
place company firm business job office home night nights weekends weekend moment noon
midnight times least most first all same it that this
""".split())
_SCHOOL_WORDS = re.compile(r"\b(?:school|college|university|uni|academy|institute|"
                           r"conservatory|polytechnic|seminary)\b")
_SECOND_PERSON = frozenset({"you", "your", "yours", "u", "ur", "yourself"})
_DISCOURSE_NP = frozenset("""
point question guess problem thing concern worry bad fault pleasure turn god gosh goodness
word answer reason understanding impression feeling opinion take bet advice excuse mind
heart day week weekend morning night life plan plans idea hope wish dream goal mistake
experience story situation suggestion recommendation question answer feedback thought
thoughts view
""".split())

# Contractions expanded before matching; the case of the first letter is kept.
_EXPANSIONS = {
    "i'm": "i am", "im": "i am", "i've": "i have", "ive": "i have", "i'd": "i would",
    "i'll": "i will", "can't": "can not", "cant": "can not", "won't": "will not",
    "he's": "he is", "she's": "she is", "it's": "it is", "that's": "that is",
    "there's": "there is", "who's": "who is", "what's": "what is", "you're": "you are",
    "we're": "we are", "they're": "they are", "we've": "we have",
}
for _aux in ("do", "does", "did", "is", "are", "was", "were", "have", "has", "had"):
    _EXPANSIONS[_aux + "n't"] = _EXPANSIONS[_aux + "nt"] = _aux + " not"
_CONTRACT = re.compile(r"\b(?:[A-Za-z]+'[A-Za-z]+|[Ii][mv]e?|[A-Za-z]+nt)\b")


def _contraction(m: re.Match) -> str:
    g = m.group(0)
    rep = _EXPANSIONS.get(g.lower())
    return g if rep is None else g[0] + rep[1:]


_CLAUSE = re.compile(r"([.!?]+)['\")\]]*(?=\s|$)|([;\n]+)|(\s+[-–—]+\s+|,)")
# Discourse openers before the statement proper: "Oh, ", "Big news: ", "Not sure if I
# mentioned it, but ".
_LEAD_WORDS = (r"(?:oh|ah|well|so|yeah|yes|anyway|anyways|honestly|btw|by\s+the\s+way|"
               r"funny\s+thing|fun\s+fact|(?:big|good|great|sad|exciting)\s+news|news|"
               r"(?:quick\s+)?update|ok|okay|also|and|but|lol|haha|wow|ugh|hey|hi|hmm|plus|"
               r"actually|sadly|luckily|seriously|guess\s+what|you\s+know\s+what|"
               r"(?:not\s+sure\s+if|in\s+case|as)\s+i\s+(?:already\s+|ever\s+)?"
               r"(?:mentioned|told\s+you|said)(?:\s+(?:it|this|that|before|already))*"
               r"(?:\s*,?\s*but)?)")
_LEAD = r"^(?:" + _LEAD_WORDS + r"\b[\s,:;!.-]*)*"
_LEAD_ONLY = re.compile(r"(?:" + _LEAD_WORDS + r"\b[\s,:;!.-]*)+", re.I)
_LEAD_RE = re.compile(_LEAD, re.I)


def strip_discourse(text: str) -> str:
    """The text without its discourse opener ("Honestly, ", "Not sure if I mentioned it,
    but "): words that frame a statement without adding to it."""
    m = _LEAD_RE.match(text)
    return text[m.end():] if m and m.end() else text
_HEDGE = re.compile(r"\b(?:if|wish|hope|maybe|perhaps|would|could|might|should|imagine|"
                    r"suppose|pretend|whether|unless|dream|dreamt|dreamed|want|wanted|"
                    r"planning|considering|thinking)\b", re.I)
_ANYMORE = re.compile(r"\b(?:anymore|any\s+more|no\s+more|no\s+longer)\b", re.I)

_AUX_WORDS = frozenset("""
am is are was have has had been do does not no longer never still currently now also just
recently actually really used to stopped quit officially finally already happily proudly
even both again presently newly only mostly basically started began became become
""".split())
_BE = frozenset({"am", "is", "are", "been", "became", "become"})
_PAST = frozenset({"was", "had"})
_NEG_AUX = frozenset({"not", "never", "used", "stopped", "quit"})

_V = r"(?P<v>[^,.;:!?()\"\n]+)"
_NUM = r"(?P<v>\d{1,3}|" + _NUMWORD + r")"
_NEW_JOB = (r"(?:got|have|has|landed|accepted|took|started|found|began)\s+(?:a|an|the|my)\s+"
            r"(?:new\s+|first\s+)?(?:full-time\s+|part-time\s+)?(?:job|position|role|internship)")
_AGE_END = (r"(?:\s+years?(?:\s+old)?|\s+y/?o)?(?=\s*$|\s+(?:and|but|now|today|this|so|"
            r"already|lol|haha|myself|too)\b)")


@dataclass(frozen=True)
class _Rule:
    slot: str
    tail: re.Pattern
    triggers: frozenset
    kind: str = "np"  # value validator
    be: bool = False  # needs a copula in the auxiliaries (or got/became in the tail)
    event: bool = False  # past tense allowed (moved, joined, was promoted...)
    neg: bool = False  # the verb itself negates (left, quit, hate)
    proper: bool = False  # the value must be capitalised in the original text
    maxw: int = 5
    cue: frozenset = frozenset()  # the text must also say one of these words
    cue_aux: frozenset = frozenset()  # and the verb have one of these auxiliaries ("still")
    check: str = ""  # a named extra condition (_CHECKS)


def _rule(slot, tail, triggers, **kw) -> _Rule:
    for k in ("cue", "cue_aux"):
        if isinstance(kw.get(k), str):
            kw[k] = frozenset(kw[k].split())
    return _Rule(slot, re.compile(r"\s+" + tail, re.I), frozenset(triggers.split()), **kw)


# Words that show a sentence is about employment, or about a romantic partner: "I'm at
# Globex now" is a job only next to one ("switched jobs"), else it could be a café.
_JOB_CUES = frozenset("""
job jobs employer company career notice hired switched colleagues coworkers co-workers
boss resigned promotion contract position role workplace
""".split())
_PARTNER_CUES = frozenset("""
partner boyfriend girlfriend wife husband fiance fiancee dating relationship together
broke split ended married engaged love romantic date dates single
""".split())
_CARERS = frozenset("""
therapist doctor dr doc counselor counsellor physio physiotherapist dentist psychiatrist
psychologist specialist coach tutor trainer nurse vet appointment appointments sessions
""".split())
_NAME = r"(?P<v>(?-i:[A-Z][a-z]+(?:-[A-Z][a-z]+)?))(?![\w'-])"
_GAZ_V = r"(?P<v>[^,.;:!?()\"\n]+)"  # a gazetteer value starts here (checked by _value)
_CAR_ADJ = r"(?:(?:new|used|brand[\s-]new|second-?hand|first|little|old|trusty)\s+)?"


# After "I" / a named or related third person (auxiliaries already consumed).
_P_RULES = [
    _rule("employer", r"(?P<verb>work|works|working|worked)\s+(?:at|for)\s+" + _V,
          "work works working worked", kind="org"),
    _rule("employer", r"(?:employed|hired)\s+(?:by|at)\s+" + _V, "employed hired",
          kind="org", event=True),
    _rule("employer", _NEW_JOB + r"(?:\s+as\s+(?:a\s+|an\s+)?[\w\s-]+?)?\s+(?:at|with)\s+"
          + _V, "job position role internship", kind="org", event=True),
    _rule("role", _NEW_JOB + r"\s+as\s+(?:a\s+|an\s+)?" + _V, "job position role internship",
          kind="occupation", event=True),
    _rule("employer", r"(?:joined|started\s+(?:working\s+)?(?:at|with))\s+" + _V,
          "joined started", kind="org", event=True, proper=True),
    _rule("employer", r"(?:left|quit)\s+(?:my|his|her|their)\s+(?:job|position|role)\s+"
          r"(?:at|with)\s+" + _V, "left quit", kind="org", event=True, neg=True),
    _rule("employer", r"(?:left|quit)\s+" + _V, "left quit", kind="org", event=True,
          neg=True, proper=True),
    _rule("employer", r"(?:got\s+|was\s+)?(?:fired|laid\s+off|let\s+go)\s+(?:from|by)\s+" + _V,
          "fired laid let", kind="org", event=True, neg=True),
    _rule("employer", r"retired\s+from\s+" + _V, "retired", kind="org", event=True, neg=True),
    _rule("role", r"(?:work|works|working)\s+as\s+(?:a\s+|an\s+)?" + _V, "as",
          kind="occupation"),
    _rule("role", r"(?:got\s+|was\s+|been\s+)?promoted\s+to\s+(?:a\s+|an\s+)?" + _V,
          "promoted", kind="role", event=True),
    _rule("role", r"(?:(?P<bec>became|become|becoming)\s+)?(?:a|an)\s+" + _V,
          "<occ>", kind="occupation", be=True),
    _rule("role", r"(?P<v>retired|unemployed|self-employed)(?![\w-])",
          "retired unemployed self-employed", be=True),
    _rule("home", r"(?:love|loves|like|likes|enjoy|enjoys|hate|hates)\s+living\s+in\s+" + _V,
          "living", kind="place", proper=True),
    _rule("home", r"(?P<verb>live|lives|living|lived)\s+in\s+" + _V,
          "live lives living lived", kind="place"),
    _rule("home", r"(?:moved|relocated)\s+(?:back\s+)?to\s+" + _V, "moved relocated",
          kind="place", event=True),
    _rule("home", r"(?:based|located|settled)\s+in\s+" + _V, "based located settled",
          kind="place", event=True),
    _rule("home", r"moved\s+(?:out\s+of|away\s+from)\s+" + _V, "moved", kind="place",
          event=True, neg=True),
    _rule("origin", r"(?:(?P<bec>come|comes)\s+from|(?:originally\s+)?from)\s+" + _V,
          "from", kind="place", proper=True, be=True),
    _rule("origin", r"(?:grew\s+up|(?:was\s+)?born|born\s+and\s+raised|(?:was\s+)?raised)"
          r"\s+in\s+" + _V,
          "grew born raised", kind="place", event=True),
    _rule("age", _NUM + _AGE_END, "<num>", kind="age", be=True),
    _rule("age", r"turned\s+" + _NUM + r"\b(?!\s*(?:%|percent|minutes?|hours?|days?|weeks?|"
          r"months?|dollars?|pounds?|degrees?|kg|km|miles?|times?|pages?|o'clock|pm|am)\b)",
          "turned", kind="age", event=True),
    _rule("name", r"(?:called|named)\s+" + _V, "called named", kind="name", be=True),
    _rule("relationship", r"(?:(?P<bec>got|getting)\s+)?(?:happily\s+|newly\s+|recently\s+)?"
          r"(?P<v>married|engaged|divorced|separated|widowed|single)(?![\w-])"
          r"(?:\s+to\s+(?P<p>(?-i:[A-Z][\w'-]+)(?:\s+(?-i:[A-Z][\w'-]+))?))?",
          "married engaged divorced separated widowed single", kind="status", be=True),
    _rule("relationship", r"(?:in\s+a\s+relationship|dating\s+someone|seeing\s+someone)",
          "relationship dating seeing", kind="status", be=True),
    _rule("partner", r"dating\s+(?P<v>(?-i:[A-Z][\w'-]+)(?:\s+(?-i:[A-Z][\w'-]+))?)",
          "dating", kind="name", be=True),
    _rule("partner", r"(?:broke|split|broken)\s+up\s+with\s+(?P<v>(?-i:[A-Z][\w'-]+))",
          "broke split broken", kind="name", event=True, neg=True),
    _rule("partner", r"(?:ended\s+(?:things|it)|called\s+it\s+(?:off|quits))\s+with\s+" + _NAME,
          "ended called", kind="name", event=True, neg=True),
    _rule("partner", r"(?:in\s+a\s+(?:\w+\s+)?relationship|together)\s+with\s+" + _NAME,
          "relationship together", kind="name", be=True),
    _rule("partner", r"(?:started|began)\s+(?:dating|seeing)\s+" + _NAME, "started began",
          kind="name", event=True),
    _rule("partner", r"seeing\s+" + _NAME + r"(?=\s*$|\s+(?:now|these\s+days|for)\b)", "seeing",
          kind="name", be=True, cue=_PARTNER_CUES),
    _rule("partner", r"with\s+" + _NAME + r"(?=\s*$|\s+(?:now|still|for|together)\b)", "still",
          kind="name", be=True, cue_aux="still", check="not job"),
    _rule("partner", r"seeing\s+" + _NAME + r"\s+(?:for|since)\s+(?:a\s+few|a\s+couple\s+of|"
          r"several|\w+)\s+(?:weeks|months|years)\b", "seeing", kind="name", be=True,
          check="not care"),
    _rule("partner", r"met\s+" + _NAME + r"\s+.{0,40}?\b(?:going\s+(?:well|great)|hit\s+it\s+off|"
          r"seeing\s+each\s+other)", "met", kind="name", event=True, cue=_PARTNER_CUES),
    _rule("pet", r"(?:have|has|got|adopted|own|owns|rescued)\s+(?:a|an|one|two|three|four|"
          r"\d+)?\s*(?:new\s+|little\s+|cute\s+|pet\s+|baby\s+)?(?P<kind>" + _PET_RE + r")s?"
          r"(?:(?=\s*$|\s+(?:" + "|".join(sorted(_BOUNDARY)) + r")\b|\s+(?:a\s+(?:few|couple)\s+"
          r"(?:of\s+)?|\w+\s+)?(?:years?|months?|weeks?|days?)\s+ago\b)|"
          r"\s+(?:named|called)\s+" + _V + r")",
          _PET_TRIGGERS, kind="pet"),
    _rule("vehicle", r"(?:drive|drives|driving)\s+(?:a|an|the)\s+" + _V, "drive drives driving",
          kind="thing", maxw=3),
    _rule("favorite", r"(?:love|like|enjoy|loves|likes|enjoys)\s+(?P<v>[^,.;:!?()\"\n]+?)"
          r"\s+(?:the\s+)?(?:most|best|more\s+than\s+anything(?:\s+else)?|above\s+all(?:\s+else)?|"
          r"most\s+of\s+all)\s*$", "most best anything above"),
    _rule("studies", r"(?:study|studies|studying|majoring\s+in|major\s+in|majored\s+in)\s+"
          + _V, "study studies studying majoring major majored", kind="thing", maxw=4),
    _rule("school", r"(?:study|studies|studying)\s+(?:[a-z]+\s+){0,3}?at\s+" + _V,
          "study studies studying", kind="school"),
    _rule("school", r"(?:go|goes)\s+to\s+" + _V, "go goes", kind="school_word"),
    _rule("school", r"(?:attend|attends|attending)\s+" + _V, "attend attends attending",
          kind="school"),
    _rule("school", r"(?:a\s+|an\s+)?(?:[a-z]+\s+)?(?:student|freshman|sophomore|junior|"
          r"senior|undergrad|undergraduate)\s+at\s+" + _V, "student freshman sophomore "
          "junior senior undergrad undergraduate", kind="school", be=True),
    _rule("graduated", r"graduated\s+from\s+" + _V, "graduated", kind="school", event=True),
    _rule("diet", r"(?:a\s+)?(?:strict\s+|full\s+|mostly\s+)?" + _GAZ_V, "<diet>", kind="diet",
          be=True),
    _rule("diet", r"(?:eat|eats|eating)\s+(?:mostly\s+|strictly\s+)?" + _GAZ_V, "eat eats eating",
          kind="diet"),
    _rule("diet", r"(?:gone|went|turned|switched\s+to|converted\s+to)\s+(?:fully\s+)?" + _GAZ_V,
          "gone went turned switched converted", kind="diet", event=True),
    _rule("diet", r"(?:follow|follows|following|started|start|switched\s+to|keep|keeps|"
          r"stick\s+to|sticks\s+to|went\s+on|gone\s+on|adopted)\s+(?:a|an|the)\s+(?:strict\s+)?"
          r"(?P<v>[a-z]+(?:[\s-][a-z]+)?)\s+diet\b", "diet", kind="diet", event=True),
    _rule("diet", r"on\s+(?:a|the)\s+(?P<v>[a-z]+(?:[\s-][a-z]+)?)\s+diet\b", "diet",
          kind="diet", be=True),
    _rule("allergy", r"allergic\s+to\s+" + _V, "allergic", kind="thing", be=True, maxw=3),
    _rule("allergy", r"(?P<v>lactose|gluten)[\s-]+intolerant", "intolerant", be=True),
    _rule("allergy", r"(?:have|has)\s+(?:a|an)\s+(?P<v>[a-z]+)\s+allergy", "allergy"),
    _rule("hobby", r"(?:really\s+|very\s+|big\s+|super\s+|totally\s+)?into\s+" + _V, "into",
          kind="thing", be=True, maxw=3),
    _rule("hobby", r"(?:took|taken|picked)\s+up\s+(?!(?:a|an|the|my|your|his|her|their|our|some|"
          r"this|that|it|on)\b)" + _V, "took taken picked", kind="thing",
          event=True, maxw=3),
    _rule("hobby", r"(?:play|plays|playing)\s+(?:the\s+)?" + _V, "play plays playing",
          kind="thing", maxw=3),
    _rule("language", r"(?:speak|speaks|speaking)\s+(?:fluent\s+)?" + _V, "speak speaks "
          "speaking", kind="thing", proper=True, maxw=2),
    _rule("children", r"(?:have|has)\s+(?P<v>\d{1,2}|" + _NUMWORD + r"|a|one|no)\s+"
          r"(?:kids|children|kid|child)\b", "kids children kid child", kind="count"),
    _rule("likes", r"(?P<verb>love|loves|like|likes|adore|adores|enjoy|enjoys|hate|hates|"
          r"dislike|dislikes|detest|detests)\s+" + _V, "love loves like likes adore adores "
          "enjoy enjoys hate hates dislike dislikes detest detests", kind="thing", maxw=3),
    # employment said obliquely, change statements, and the second half of "left X and ..."
    _rule("employer", r"(?:at|with)\s+" + _V, " ".join(_JOB_CUES | {"years", "since"}), kind="org",
          be=True, proper=True, check="job"),
    _rule("employer", r"(?:handed\s+in|gave|put\s+in)\s+(?:my\s+)?(?:notice|resignation)\s+"
          r"(?:at|to)\s+" + _V, "notice resignation", kind="org", event=True, neg=True,
          proper=True),
    _rule("employer", r"resigned\s+from\s+" + _V, "resigned", kind="org", event=True, neg=True,
          proper=True),
    _rule("role", r"(?:re-?trained|trained|qualified|started(?:\s+out)?|began|starting)\s+"
          r"(?:(?:my|a|the)\s+(?:[a-z]+\s+)?(?:day|week|month|shift|job|career|training)\s+)?"
          r"as\s+(?:a\s+|an\s+)?" + _V, "retrained trained qualified started began starting",
          kind="occupation", event=True),
    _rule("hobby", r"(?:got|gotten|getting)\s+(?:really\s+|heavily\s+|seriously\s+)?into\s+"
          + _GAZ_V, "into", kind="hobby", event=True),
    _rule("hobby", r"(?:quit|gave\s+up|given\s+up|stopped|dropped)\s+(?:doing\s+)?" + _GAZ_V,
          "quit gave given stopped dropped", kind="hobby", event=True, neg=True),
    _rule("hobby", r"(?:spend|spends|spending)\s+(?:(?:most|all|every|each)\s+(?:of\s+)?)?"
          r"(?:(?:my|his|her|their)\s+)?(?:(?:free|spare)\s+time|weekends?|evenings?)\s+"
          r"(?:on|doing)\s+" + _GAZ_V, "spend spends spending", kind="hobby"),
    _rule("hobby", r"(?:big\s+on|obsessed\s+with|passionate\s+about|hooked\s+on|crazy\s+about|"
          r"addicted\s+to)\s+" + _GAZ_V, "big obsessed passionate hooked crazy addicted",
          kind="hobby", be=True),
    _rule("hobby", r"(?:do|does)\s+(?:a\s+lot\s+of|lots\s+of)\s+" + _GAZ_V, "lot lots",
          kind="hobby"),
    _rule("vehicle", r"(?:bought|got|purchased|leased|ordered|picked\s+up|have|has|own|owns)\s+"
          r"(?:a|an|my|our|the)\s+" + _CAR_ADJ + _GAZ_V, "<car>", kind="car", event=True),
    _rule("vehicle", r"(?:sold|totaled|totalled|wrecked|scrapped|got\s+rid\s+of|traded(?:\s+in)?)"
          r"\s+(?:my|our|the)\s+" + _CAR_ADJ + _GAZ_V, "<car>", kind="car", event=True, neg=True),
    _rule("vehicle", r"had\s+(?:a|an|my|our|the)\s+(?:same\s+)?" + _CAR_ADJ + _GAZ_V
          + r"(?=.*\b(?:for|since)\b)", "<car>", kind="car", cue_aux="have has"),
    _rule("vehicle", r"traded\s+(?:in\s+)?(?:my|our|the)\s+[^,;.!?]+?\s+for\s+(?:a|an)\s+"
          + _CAR_ADJ + _GAZ_V, "traded", kind="car", event=True),
    _rule("pet", r"(?:lost|buried|rehomed)\s+(?:my|our)\s+(?:\w+\s+)?(?P<kind>" + _PET_RE + r")\b",
          "lost buried rehomed", kind="pet", event=True, neg=True),
    _rule("home", r"moved\s+(?:here\s+|away\s+)?from\s+(?P<v>[^,.;:!?()\"\n]+?)\s+to\b", "moved",
          kind="place", event=True, neg=True),
    _rule("home", r"moved\s+(?:here\s+)?from\s+[^,.;:!?()\"\n]+?\s+to\s+" + _V, "moved",
          kind="place", event=True),
]

_IS = r"\s+is\s+(?P<neg>(?:not|no\s+longer)\s+)?(?:now\s+|still\s+)?"
# After "my" / "Bob's" / "my sister's": the possessed noun phrase.
_POSS_RULES = [
    _rule("employer", r"(?:employer|company|workplace)" + _IS + _V,
          "employer company workplace", kind="org"),
    _rule("employer", r"(?:new\s+|current\s+)?job" + _IS + r"(?:at|with)\s+" + _V, "job",
          kind="org"),
    _rule("role", r"(?:new\s+|current\s+|day\s+)?job\s+as\s+(?:a\s+|an\s+)?" + _V, "job",
          kind="occupation"),
    _rule("role", r"(?:new\s+|current\s+)?(?:job|job\s+title|title|role|occupation|profession|"
          r"position)" + _IS + r"(?:a\s+|an\s+)?" + _V,
          "job title role occupation profession position", kind="occupation"),
    _rule("home", r"home" + _IS + r"(?:in\s+)?" + _V, "home", kind="place"),
    _rule("home", r"(?:home\s+|current\s+)?address" + _IS + _V, "address", kind="thing"),
    _rule("origin", r"(?:hometown|home\s+town)" + _IS + _V, "hometown town", kind="place"),
    _rule("age", r"age" + _IS + _NUM + r"\b", "age", kind="age"),
    _rule("name", r"(?:full\s+|first\s+)?name" + _IS + _V, "name", kind="name"),
    _rule("pet", r"(?P<kind>" + _PET_RE + r")(?:['’]s\s+name)?" + _IS +
          r"(?:called\s+|named\s+)?" + _V, _PET_TRIGGERS, kind="pet"),
    _rule("vehicle", r"(?:new\s+)?car" + _IS + r"(?:a|an)\s+" + _V, "car", kind="thing", maxw=3),
    _rule("phone", r"(?:(?:phone|cell|mobile|telephone)(?:\s+number)?|number)" + _IS +
          r"(?P<v>\+?\d[\d\s().-]{5,}\d)", "phone cell mobile telephone number", kind="raw"),
    _rule("email", r"e-?mail(?:\s+address)?" + _IS +
          r"(?P<v>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)", "email e-mail", kind="raw"),
    _rule("favorite", r"(?:absolute\s+|all-time\s+|new\s+)?fav(?:ou?rite|e)\s+(?P<cat>[a-z]+"
          r"(?:[\s-][a-z]+){0,2}?)(?:\s*:\s*|" + _IS + r")(?:to\s+)?" + _V,
          "favorite favourite favorit fave", kind="thing", maxw=4),
    _rule("likes", r"(?:absolute\s+|all-time\s+)?fav(?:ou?rite|e)\s+(?P<cat>[a-z]+"
          r"(?:[\s-][a-z]+){0,2}?)\s+are\s+" + _V, "favorite favourite fave", kind="thing",
          maxw=4),
    _rule("hobby", r"(?:(?:favou?rite|new|main|current|latest|biggest|only)\s+)*hobb(?:y|ies)"
          r"(?:\s+(?:these\s+days|now|lately))?(?:\s+(?:is|are|include|includes)\s+|\s*:\s*)"
          + _V,
          "hobby hobbies", kind="thing", maxw=3),
    _rule("studies", r"major" + _IS + r"(?:in\s+)?" + _V, "major", kind="thing", maxw=4),
    _rule("school", r"(?:school|university|college|uni)" + _IS + _V,
          "school university college uni", kind="school"),
]
# Nouns the table owns: the generic rule must not invent e.g. slot "phone" = "dead".
_TABLE_NP = frozenset("""
employer company workplace job title role occupation profession position home address
hometown town age name car phone cell mobile telephone number email e-mail mail hobby major
school university college uni
""".split()) | frozenset(_PETS)
_PET_WORDS = frozenset(w for p in _PETS for w in p.split()) | frozenset(
    p + "s" for p in _PETS)
_WORK_WORDS = frozenset("""
work team colleagues coworkers co-workers office job department company employer workplace
position role shift boss manager
""".split())
_PARTNER_WORDS = frozenset("partner boyfriend girlfriend wife husband spouse fiance fiancee "
                           "fiancé fiancée".split())
_WEEKEND_WORDS = frozenset("weekends evenings sundays saturdays mornings summers winters "
                           "days".split())
# Words one of the sentence frames needs (the pseudo-words are set per text in _claims).
_FRAME_TRIGGERS = frozenset("""
being <occ> <num> living home <andi> someone ended over eat favorite favourite fave nothing
replaced used hobby free spare <car>
""".split()) | _WORK_WORDS | _PARTNER_WORDS | _WEEKEND_WORDS
_CLAUSE_TRIGGERS = frozenset({"my", "our", "favorite", "favourite", "fave"})


def _index(rules: list[_Rule]) -> dict[str, tuple[int, ...]]:
    """Trigger word -> the rules it can start (in table order), so a text picks its rules
    by one set intersection instead of a test per rule."""
    out: dict[str, list[int]] = {}
    for i, r in enumerate(rules):
        for w in r.triggers:
            out.setdefault(w, []).append(i)
    return {w: tuple(ix) for w, ix in out.items()}


_P_INDEX = _index(_P_RULES)
_POSS_INDEX = _index(_POSS_RULES)
_P_KEYS, _POSS_KEYS = frozenset(_P_INDEX), frozenset(_POSS_INDEX)


def _pick(rules: list[_Rule], index: dict[str, tuple[int, ...]], keys: frozenset[str],
          toks: set[str]) -> list[_Rule]:
    words = toks.intersection(keys)
    if not words:
        return []
    if len(words) == 1:
        return [rules[i] for i in index[words.pop()]]
    hit: set[int] = set()
    for w in words:
        hit.update(index[w])
    return [rules[i] for i in sorted(hit)]
_ALL_TRIGGERS = frozenset().union(*(r.triggers for r in _P_RULES + _POSS_RULES)) | {
    "my", "favorite", "favourite", "fave"} | _FRAME_TRIGGERS
_GENERIC = re.compile(r"\s+(?P<np>[a-z]+(?:[\s-][a-z]+){0,2}?)" + _IS + _V, re.I)
_REVERSE_FAV = re.compile(r"(?P<v>[^,.;:!?()\"\n]+?)\s+(?:is|are)\s+(?:definitely\s+|probably"
                          r"\s+|still\s+|now\s+)?my\s+(?:absolute\s+|all-time\s+|new\s+)?"
                          r"fav(?:ou?rite|e)(?:\s+(?P<cat>[a-z]+(?:\s+[a-z]+)?))?\s*$", re.I)
_SUBJECT = re.compile(
    r"\b(?:(?P<i>i)\b(?!['’])|(?P<we>we)\b(?!['’])"
    r"|(?P<my>my|our)\b(?:\s+(?:(?P<adj>new|current|ex|former|late)(?:\s+|-))?(?P<rel>" + _REL_RE
    + r")\b(?:\s+(?P<relname>(?-i:[A-Z][a-z]+)))?)?"
    r"|(?P<name>(?-i:[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2})))(?P<gen>['’]s\b)?",
    re.I)
# What "we" / "our" say about the speaker: the household's home, pets and car (not "our
# company", which may be the speaker's team).
_WE_SLOTS = frozenset({"home", "pet", "vehicle"})
_PARTNER_RELS = frozenset({"partner", "boyfriend", "girlfriend", "wife", "husband", "spouse",
                           "fiance", "ex"})
_PARTNER_IS = re.compile(r"\s+is\s+(?:called\s+|named\s+)?" + _NAME + r"\s*$")
_LEMMA = {"favourite": "favorite", "colour": "color", "flavour": "flavor",
          "neighbour": "neighbor", "fave": "favorite"}
_ASCII_WORD = re.compile(r"[a-z][a-z'-]*")


def _lemma(word: str) -> str:
    """Singular, American spelling: "colours" -> "color" (enough for slot names)."""
    w = word
    if len(w) > 3 and not w.endswith(("ss", "us", "is")):
        if w.endswith("ies"):
            w = w[:-3] + "y"
        elif w.endswith(("ches", "shes", "xes", "sses")):
            w = w[:-2]
        elif w.endswith("s"):
            w = w[:-1]
    return _LEMMA.get(w, w)


def _lemma_np(np_: str) -> str:
    return " ".join(_lemma(w) for w in np_.casefold().replace("-", " ").split())


def _clauses(text: str) -> list[tuple[str, bool, list[str]]]:
    """(clause, is_question, before): split at sentence ends, semicolons, dashes and commas;
    a clause is a question when a '?' ends it ("I live in Paris, you?" keeps its first
    clause); `before` holds the clauses before it in its sentence (see _opens)."""
    parts = _CLAUSE.split(text)
    out = []
    sent: list[str] = []
    for i in range(0, len(parts), 4):
        clause = parts[i].strip() if parts[i] else ""
        end, stop = parts[i + 1] if i + 1 < len(parts) else None, \
            parts[i + 2] if i + 2 < len(parts) else None
        if len(clause) >= 4:
            out.append((clause, bool(end and "?" in end), sent[:]))
        if end or stop:
            sent = []
        elif clause:
            sent.append(clause)
    return out


def _opens(before: list[str]) -> bool:
    """Whether a clause opens its sentence: only discourse words ("Oh", "Big news") before
    it there."""
    return all(_LEAD_ONLY.fullmatch(c) for c in before)


def _value_words(raw: str) -> list[tuple[str, str]]:
    """(original, casefolded) words of a raw value, edge punctuation and symbols removed."""
    out = []
    for w in raw.split():
        w = "".join(ch for ch in w if unicodedata.category(ch)[0] not in "SC")
        i, j = 0, len(w)
        while i < j and not w[i].isalnum():
            i += 1
        while j > i and not w[j - 1].isalnum():
            j -= 1
        if i < j:
            out.append((w[i:j], w[i:j].casefold()))
    return out


def _trim(raw: str, maxw: int, keep_and: bool = False) -> tuple[str, str] | None:
    """Cut a raw value at its first boundary word ("and"/"or" kept for list slots); None
    when empty, too long or rejected. Returns (original-case text, normalised value)."""
    ws = _value_words(raw)
    for i, (orig, low) in enumerate(ws):
        adverb = i > 0 and len(low) > 4 and low.endswith("ly") and orig[0].islower()
        if adverb or low in _BOUNDARY and not (keep_and and low in ("and", "or") and i > 0):
            ws = ws[:i]  # "Ohio originally", "Google and", "Paris at the moment"
            break
    while ws and ws[0][1] in ("the", "a", "an"):
        ws = ws[1:]
    while ws and ws[-1][1] in ("the", "a", "an", "my", "of", "and", "or"):
        ws = ws[:-1]
    if not ws or len(ws) > maxw:
        return None
    lows = [w for _, w in ws]
    if lows[0] in _REJECT_START or any(w in _SECOND_PERSON for w in lows):
        return None
    if all(w in STOP_WORDS for w in lows):
        return None
    return " ".join(o for o, _ in ws), " ".join(lows)


def _place(raw: str) -> tuple[str, str] | None:
    """A place: 'a small town in Ohio' -> Ohio; a bare 'small apartment' says nothing."""
    m = re.match(r"\s*(?:(?:a|an|the|my|our)\s+)?(?P<head>[\w\s-]*?)\s+(?:in|near|outside(?:\s+of)?"
                 r"|just\s+outside(?:\s+of)?)\s+(?P<rest>.+)$", raw, re.I)
    if m and all(w.casefold() in _GENERIC_PLACE for w in m.group("head").split()):
        raw = m.group("rest")
    t = _trim(raw, 4)
    if t is None or all(w in _GENERIC_PLACE for w in t[1].split()):
        return None
    if t[0][0].islower() and (t[1].split()[0] in _NOT_PLACE or " of " in f" {t[1]} "):
        return None
    return t


def _is_occupation(value: str) -> bool:
    ws = value.split()
    if not ws or len(ws) > 3:
        return False
    head = _lemma(ws[-1])
    return head in _OCCUPATIONS or (len(head) > 5 and head.endswith(_OCC_SUFFIX))


def _occupation_prefix(ws: list[str]) -> str | None:
    """The longest occupation the words start with when a verb follows it ("journalist
    keeps them busy", "nurse works nights"); None otherwise ("dog person")."""
    for k in range(min(3, len(ws) - 1), 0, -1):
        nxt = ws[k]
        verb = nxt in STOP_WORDS or nxt in _BOUNDARY or (
            nxt.endswith(("s", "ed")) and not _is_occupation(nxt))
        if verb and _is_occupation(" ".join(ws[:k])):
            return " ".join(ws[:k])
    return None


def _age(v: str) -> str | None:
    try:
        n = int(_num_value(v))
    except ValueError:
        return None
    return str(n) if 1 <= n <= 120 else None


def _value(rule: _Rule, m: re.Match) -> str | None:
    """The validated, normalised value of a rule's match, or None (precision first)."""
    raw = m.group("v") if "v" in m.groupdict() and m.group("v") is not None else None
    kind = rule.kind
    if kind == "pet":
        pet = _PETS[re.sub(r"\s+", " ", m.group("kind").casefold())]
        if raw is None:
            return pet
        t = _trim(raw, 5, keep_and=True)
        names = _split_multi("pet", t[1]) if t else []
        if not names or any(len(n.split()) > 2 for n in names):
            return None
        if not t[0][0].isupper() and not re.search(r"\b(?:named|called|name)\b", m.group(0),
                                                   re.I):
            return None  # "my dog is adorable" names no dog
        return " and ".join(f"{pet} {n}" for n in names)  # split again by the caller
    if raw is None:
        return None
    if kind in ("diet", "hobby", "dish"):
        ws = [w for _, w in _value_words(raw)]
        while ws and ws[0] in ("a", "an", "the"):
            ws = ws[1:]
        hit = _gaz_prefix(kind, ws)
        return hit[0] if hit else None
    if kind == "car":
        return _car(raw)
    if rule.slot in ("likes", "hobby"):
        raw = re.sub(r"^\s*to\s+", "", raw)  # "I love to travel"
    if kind == "raw":
        v = raw.strip().casefold()
        return re.sub(r"[\s().-]+", "", v) if rule.slot == "phone" else v
    if kind == "age":
        return _age(raw)
    if kind == "count":
        low = raw.casefold()
        return {"a": "1", "one": "1", "no": "0"}.get(low) or _num_value(low)
    if kind == "status":
        low = raw.casefold()
        return "in a relationship" if low.startswith(("in a", "dating", "seeing")) else low
    multi = is_multi_valued(rule.slot)
    t = _place(raw) if kind == "place" else _trim(raw, rule.maxw * (3 if multi else 1), multi)
    if t is not None and multi and any(len(x.split()) > rule.maxw
                                       for x in _split_multi(rule.slot, t[1])):
        return None
    if t is None:
        return None
    orig, v = t
    if rule.proper and not orig[0].isupper():
        return None
    if kind not in ("place", "org", "name") and orig[0].islower() and \
            v.split()[0] in _EVALUATIVE:
        return None
    if kind == "org" and (v.split()[0] in _NOT_EMPLOYER or v[0].isdigit()):
        return None
    if kind == "occupation" and not _is_occupation(v):
        v = _occupation_prefix(v.split())  # "a journalist keeps them busy"
        if v is None:
            return None
    if kind == "role" and (v[0].isdigit() or len(v.split()) > 4):
        return None
    if kind == "name" and not all(_ASCII_WORD.fullmatch(w) or w.isalpha() for w in v.split()):
        return None
    if kind == "name" and (len(v.split()) > 3 or v.split()[0] in NON_NAMES or
                           orig[0].islower() and v.split()[0] in _EVALUATIVE):
        return None
    if kind == "school" and not (_SCHOOL_WORDS.search(v) or orig[0].isupper()):
        return None
    if kind == "school_word" and not _SCHOOL_WORDS.search(v):
        return None
    return v or None


def _aux_positions(clause: str, start: int) -> list[tuple[int, list[str]]]:
    """Positions after 0..k auxiliary words following a subject, longest chain first."""
    out = [(start, [])]
    pos = start
    auxes: list[str] = []
    for m in re.finditer(r"\s+([A-Za-z]+)", clause[start:]):
        if m.start() != pos - start:
            break
        w = m.group(1).lower()
        if w not in _AUX_WORDS or len(auxes) >= 6:
            break
        if w == "to" and auxes[-1:] != ["used"]:
            break
        auxes = auxes + [w]
        pos = start + m.end()
        out.append((pos, auxes))
    return out[::-1]


_HATE = frozenset({"hate", "hates", "dislike", "dislikes", "detest", "detests"})


@dataclass(frozen=True)
class _Rules:
    """The rules one text can trigger (chosen once per text by its words)."""

    person: list[_Rule]
    poss: list[_Rule]
    words: set[str]


_ADVERBS = frozenset("""
just recently currently still also now really actually finally officially already never no
longer happily newly only mostly basically even both again presently
""".split())
_PAST_3RD = frozenset("""
is was has had does did got left quit became took grew began broke went won found joined
""".split())


def _third_person_verb(clause: str, end: int) -> bool:
    """Whether the verb after a third-person subject agrees with it ("Bob works", "Emma
    moved"): a capitalised sentence opener followed by a base form ("Make love ...") is
    not a person."""
    for m in re.finditer(r"\s+([A-Za-z']+)", clause[end : end + 60]):
        w = m.group(1).lower()
        if w in _ADVERBS:
            continue
        return w in _PAST_3RD or (w.endswith(("s", "ed")) and w not in ("was", "does"))
    return False


_AND_VERB = re.compile(r"\s+(?:and|&)(?:\s+then)?(?=\s+[a-z])", re.I)


def _person_claims(clause: str, end: int, subject: str, rules: _Rules,
                   out: list[Claim], third: bool = False,
                   slots: frozenset | None = None) -> None:
    """Claims of a subject ("I", "Bob", "my sister") from the verb phrase after it, and
    from verb phrases joined to it by "and" ("I left X and joined Y"); `slots` limits
    what a "we" can say about the speaker."""
    if not rules.person or (third and not _third_person_verb(clause, end)):
        return
    starts = [end]
    matched = -1  # where the first verb phrase's first rule match begins
    for k in range(3):
        if k >= len(starts):
            break
        positions = _aux_positions(clause, starts[k])
        for rule in rules.person:
            if slots is not None and rule.slot not in slots:
                continue
            for pos, auxes in positions:
                m = rule.tail.match(clause, pos)
                if m is not None:
                    _person_claim(clause, rule, m, set(auxes), subject, out, rules.words)
                    if k == 0 and (matched < 0 or m.start() < matched):
                        matched = m.start()
                    break
        a0 = set(positions[0][1])
        if k == 0 and matched >= 0 and not (a0 & {"not", "never"} or {"no", "longer"} <= a0) \
                and (" and " in clause[matched:] or " & " in clause[matched:]):
            starts += [m.end() for m in _AND_VERB.finditer(clause, matched)]


def _cue_ok(rule: _Rule, a: set[str], words: set[str], clause: str, m: re.Match) -> bool:
    if rule.cue and words.isdisjoint(rule.cue):
        return False
    if rule.cue_aux and not a & rule.cue_aux:
        return False
    if rule.check == "not care":  # "seeing Kim for two years" may be a therapist
        return words.isdisjoint(_CARERS)
    if rule.check == "not job":  # "still with Fabrikam, nothing new at the job"
        return words.isdisjoint(_JOB_CUES) and "job" not in words
    if rule.check == "job":  # "I'm still at X" with a job word, or "I've been at X for years"
        after = clause[m.start():]
        if "been" in a and re.search(r"\b(?:for|since)\b", after):
            return True
        return not words.isdisjoint(_JOB_CUES) and bool(
            a & {"still", "now"} or re.search(r"\b(?:now|these\s+days)\b", after))
    return True


def _person_claim(clause: str, rule: _Rule, m: re.Match, a: set[str], subject: str,
                  out: list[Claim], words: set[str] = frozenset()) -> None:
    groups = m.groupdict()
    if rule.be and not (a & _BE or a & _PAST or groups.get("bec")):
        return
    if (rule.cue or rule.cue_aux or rule.check) and not _cue_ok(rule, a, words, clause, m):
        return
    verb = (groups.get("verb") or "").lower()
    aux_neg = bool(a & _NEG_AUX or ("no" in a and "longer" in a))
    past = bool(a & _PAST) or verb.endswith("ed")
    if past and not rule.event and not aux_neg:
        perfect = a & {"have", "has"} and "was" not in a and \
            re.search(r"\b(?:for|since|forever)\b", clause[m.start():])
        if not perfect:  # "I was living in Paris", "I worked at X": a past state
            return
    verb_neg = rule.neg or verb in _HATE
    if verb_neg and "used" in a:
        return
    value = _value(rule, m)
    if value is None:
        return
    neg = aux_neg or bool(_ANYMORE.search(clause, m.end() - 1))
    neg = neg != verb_neg  # "I no longer hate X": likes X
    for v in _split_multi(rule.slot, value):
        out.append(Claim(subject, rule.slot, v, neg))
    if groups.get("p"):
        out.append(Claim(subject, "partner", m.group("p").casefold(), neg))


def _split_multi(slot: str, value: str) -> list[str]:
    if is_multi_valued(slot):
        return [v.strip() for v in re.split(r"\s+(?:and|or|&)\s+", value) if v.strip()]
    return [value]


def _poss_claims(clause: str, end: int, subject: str, rules: _Rules, multi: bool,
                 out: list[Claim], our: bool = False) -> None:
    if "<pet>" in rules.words or "<car>" in rules.words:
        _possession(clause, end, subject, out)
    for rule in rules.poss:
        if our and rule.slot not in _WE_SLOTS:
            continue
        m = rule.tail.match(clause, end)
        if m is None:
            continue
        value = _value(rule, m)
        if value is None:
            return
        neg = bool(m.groupdict().get("neg")) or bool(_ANYMORE.search(clause, m.end() - 1))
        slot = rule.slot
        if "cat" in m.groupdict() and m.group("cat"):
            cat = _lemma_np(m.group("cat"))
            slot = f"likes {cat}" if slot == "likes" or multi else f"favorite {cat}"
        for v in _split_multi(slot, value):
            out.append(Claim(subject, slot, v, neg))
        return
    m = None if our else _GENERIC.match(clause, end)
    if m is None:
        return
    np_ = _lemma_np(m.group("np"))
    nws = np_.split()
    if len(nws) > 2 or np_ in _RELATIONS or nws[-1] in _TABLE_NP or any(
            w in STOP_WORDS or w in _DISCOURSE_NP or w in _EVALUATIVE or w in FILLER
            or w in _REJECT_START for w in nws):
        return
    if nws[0] in ("new", "old", "current", "former", "first", "last", "own", "main", "real"):
        nws = nws[1:]
        if not nws:
            return
    rest = clause[m.start("v"):]
    if re.match(r"\s*(?:to|that|like|so|very|really|going|getting|\w+ing)\b", rest, re.I):
        return
    t = _trim(m.group("v"), 4)
    if t is None or t[0][0].islower() and t[1].split()[0] in _EVALUATIVE:
        return
    out.append(Claim(subject, " ".join(nws), t[1],
                     bool(m.group("neg")) or bool(_ANYMORE.search(clause, m.end() - 1))))


def _possession(clause: str, end: int, subject: str, out: list[Claim]) -> None:
    """ "my Honda Civic needs tires", "Nina's beagle", "my cat passed away": owning a pet
    or a car, said in passing after a possessive."""
    m = _MY_THING.match(clause, end)
    if m is None:
        return
    rest, adj = m.group("rest"), m.group("adj").lower().split()
    pm = _PET_KIND.match(rest)
    if pm is not None:
        after = rest[pm.end() :].split()
        if after and _np_goes_on(after[0]):
            return  # "my dog walker", "my horse painting"
        gone = _GONE.match(rest, pm.end()) is not None
        if gone or not _GRIEF.search(clause):
            out.append(Claim(subject, "pet", _PETS[pm.group("kind").lower()], gone))
    elif "old" not in adj and "former" not in adj and (car := _car(rest)):
        gone = _GONE.search(rest) is not None  # "my Volvo got stolen"
        out.append(Claim(subject, "vehicle", car, gone))


def _partner_claim(clause: str, m: re.Match, speaker: str, out: list[Claim]) -> None:
    """ "my partner Sam ...", "my new boyfriend Leo", "my partner is Sam", "my ex Jo"."""
    name = m.group("relname")
    if name is None:
        pm = _PARTNER_IS.match(clause, m.end())
        name = pm.group("v") if pm else None
    if name and name.lower() not in NON_NAMES:
        neg = (m.group("adj") or "").lower() in ("ex", "former", "late") or \
            m.group("rel").lower() == "ex"
        out.append(Claim(speaker, "partner", name.casefold(), neg))


def _rel_subject(speaker: str, rel: str) -> str:
    return f"{speaker}'s {rel}" if speaker else f"my {rel}"


def _clause_claims(clause: str, speaker: str, rules: _Rules, out: list[Claim]) -> None:
    for m in _SUBJECT.finditer(clause):
        if m.start() and _HEDGE.search(clause, 0, m.start()):
            return  # "if I lived in Paris", "I wish my job was..."
        before = clause[: m.start()]
        gen = bool(m.group("gen"))
        if m.group("i") or m.group("we"):
            if not gen:
                _person_claims(clause, m.end(), speaker, rules, out,
                               slots=_WE_SLOTS if m.group("we") else None)
            continue
        if m.group("my"):
            rel = m.group("rel")
            our = m.group("my").lower() == "our"
            if rel is None:
                multi = bool(re.search(r"\bone\s+of\s+$", before, re.I))
                _poss_claims(clause, m.end(), speaker, rules, multi, out, our)
                continue
            relname = m.group("relname")
            if _RELATIONS[rel.lower()] in _PARTNER_RELS and not our and not gen:
                _partner_claim(clause, m, speaker, out)
            if relname and relname.lower() not in NON_NAMES:
                subj = relname.casefold()
            else:
                subj = _rel_subject(speaker, _RELATIONS[rel.lower()])
                if relname:  # "my sister Is..." -- not a name after all
                    continue
            if gen:
                _poss_claims(clause, m.end(), subj, rules, False, out)
            else:
                _person_claims(clause, m.end(), subj, rules, out, third=True)
            continue
        ws = m.group("name").split()
        while ws and ws[0].lower() in NON_NAMES:
            ws = ws[1:]
        if not ws or any(w.lower() in NON_NAMES for w in ws):
            continue
        name = " ".join(ws).casefold()
        subj = _rel_subject(speaker, _RELATIONS[name]) if name in _RELATIONS else name
        if gen:
            _poss_claims(clause, m.end(), subj, rules, False, out)
        else:
            _person_claims(clause, m.end(), subj, rules, out, third=True)
    if not rules.words.isdisjoint(("favorite", "favourite", "fave")):
        m = _REVERSE_FAV.search(clause)
        if m and not _HEDGE.search(clause[: m.start("v")]):
            ws = [w for _, w in _value_words(m.group("v"))]
            tail: list[str] = []
            for w in reversed(ws):
                if w in STOP_WORDS or w in _REJECT_START or w.endswith("ly") or w in (
                        "think", "guess", "say", "feel", "believe", "know"):
                    break
                tail.insert(0, w)
            if tail and len(tail) <= 3:
                cat = _lemma_np(m.group("cat")) if m.group("cat") else ""
                plural = re.search(r"\bare\s+(?:\w+\s+)?my\b", m.group(0), re.I)
                slot = ("likes " if plural else "favorite ") + cat if cat else "favorite"
                out.append(Claim(speaker, slot.strip(), " ".join(tail), False))


# -- frames: oblique statements of a slot, matched per sentence ---------------------------

_NUM_V = r"(?P<v>\d{1,3}|" + _NUMWORD + r")"
_COMMA = r"\s*(?:,|\s[-–—]+|:)\s*"  # a comma, or the dash chat uses for one
_COMMA_OPT = r"(?:" + _COMMA + r"|\s+)"
_STATE_VERB = (r"(?:is|isn't|means|makes|has|keeps|gets|takes|pays|can|feels|brings|requires|"
               r"gives|involves|comes)\b")
_FRAME_FLAGS = re.I
_BEING = re.compile(_LEAD + r"being\s+(?P<rest>.+)$", _FRAME_FLAGS)
_WHO = (r"(?:(?-i:(?P<i>I))|my\s+(?P<rel>" + _REL_RE + r")(?:\s+(?P<relname>(?-i:[A-Z][a-z]+)))?|"
        r"(?P<name>(?-i:[A-Z][a-z]+)))")
_BEING_WHO = re.compile(_LEAD + r"being\s+(?:a|an)\s+(?P<v>[a-z][\w\s-]*?)" + _COMMA + _WHO + r"\s",
                        _FRAME_FLAGS)
_WHO_IS_AGE = re.compile(r"(?:^|\s)" + _WHO + r"\s*[,-]\s*who\s+is\s+" + _NUM_V
                         + r"(?:\s+years\s+old)?\s*[,-]", _FRAME_FLAGS)
_AS_A = re.compile(_LEAD + r"as\s+(?:a|an)\s+(?P<v>[a-z][\w\s-]*?)" + _COMMA_OPT + r"(?-i:I)\s",
                   _FRAME_FLAGS)
_AT_AGE = re.compile(_LEAD + r"at\s+" + _NUM_V + r"(?:\s+years\s+old)?" + _COMMA_OPT + r"(?-i:I)\s+"
                     r"(?:(?:finally|really|still|now|already|honestly|totally|actually|truly|"
                     r"definitely|just|kind\s+of|sort\s+of)\s+)*(?:am|feel|know|think|realize|"
                     r"realise|understand|appreciate|care|can|have\s+(?:learned|realized|"
                     r"realised|figured)|get|see|value|guess)\b", _FRAME_FLAGS)
_LIVING_IN = re.compile(_LEAD + r"living\s+in\s+(?P<v>[^,.;:!?]+?)\s+(?:has\s+been|is\s+not|"
                        + _STATE_VERB + r"|costs|was)", _FRAME_FLAGS)
_HOME_IS = re.compile(_LEAD + r"home\s+(?:for\s+(?:me|us)\s+)?is\s+(?:now\s+|still\s+)?"
                      r"(?P<v>[^,.;:!?]+?)(?:\s+(?:for\s+(?:me|us)|now|these\s+days|at\s+the\s+"
                      r"moment))*\s*$", _FRAME_FLAGS)
_WORK_AT = re.compile(_LEAD + r"(?:work|things\s+at\s+work|life|my\s+(?:(?P<old>old|former|"
                      r"previous)\s+)?(?:team|colleagues|coworkers|co-workers|office|job|"
                      r"department|company|employer|workplace|position|role|shift|boss|"
                      r"manager))\s+(?:at|with)\s+(?P<v>[^,.;:!?]+?)\s+(?:is|are|was|were|has|"
                      r"have|had|keeps|keep|gets|get|isn't|aren't|wasn't|just|will|can|needs|"
                      r"wants|did|does|do)\b", _FRAME_FLAGS)
_LOVE_MY_JOB = re.compile(r"\b(?-i:I)\s+(?:really\s+|absolutely\s+|honestly\s+)?(?:love|like|"
                          r"enjoy|hate)\s+my\s+(?:new\s+)?(?:job|team|colleagues|coworkers|"
                          r"work|office|boss)\s+at\s+(?P<v>[^,.;:!?]+)", _FRAME_FLAGS)
_PNAME = r"(?P<v>(?-i:[A-Z][a-z]+))"
_AND_I = re.compile(r"(?:^|(?<=[\s,]))" + _PNAME + r"\s+and\s+(?-i:I)\s+(?P<tail>.+)$",
                    _FRAME_FLAGS)
# "Sam and I have been together for years" (not "... together at the mall"), "Sam and I
# split up" (not "split the bill").
_FOR_GOOD = (r"(?=\s*$|\s+(?:for|since|now|again|officially|anymore|last|recently|a\s+while|"
             r"after|years|months|weeks)\b)")
_COUPLE = re.compile(r"(?:have\s+been|are|am|have|got|just\s+got)\s+(?:(?:still|now|happily|"
                     r"officially|finally|been|recently)\s+)*(?:(?:together|living\s+together)"
                     + _FOR_GOOD + r"|married|engaged|getting\s+(?:married|engaged)|a\s+couple|"
                     r"dating|seeing\s+each\s+other|moved\s+in\s+together|an\s+item)\b",
                     _FRAME_FLAGS)
_UNCOUPLE = re.compile(r"(?:(?:have|had|just|finally|officially|recently|are|have\s+been)\s+)*"
                       r"(?:broke\s+up|broken\s+up|split\s+up|divorced|called\s+it\s+quits|"
                       r"ended\s+(?:things|it)|(?:split|separated|over|done|through)" + _FOR_GOOD
                       + r")\b", _FRAME_FLAGS)
_APPOS_PARTNER = re.compile(_LEAD + _PNAME + _COMMA + r"my\s+(?:(?P<adj>new|current|ex|former|"
                            r"late)[\s-]+)?(?:partner|boyfriend|girlfriend|wife|husband|spouse|"
                            r"fianc[eé]e?)" + _COMMA, _FRAME_FLAGS)
_SOMEONE_NEW = re.compile(r"\b(?-i:I)\s+(?:(?:have|am|just|recently|finally|been)\s+)*"
                          r"(?:started\s+|begun\s+|began\s+)?(?:dating|seeing)\s+someone"
                          r"(?:\s+new)?\s*[,:-]\s*" + _PNAME + r"(?![\w'-])", _FRAME_FLAGS)
_ENDED_WITH = re.compile(_LEAD + r"(?:things|it)\s+(?:ended|is\s+over|are\s+over|did\s+not\s+"
                         r"work\s+out)\s+(?:with|between\s+me\s+and)\s+" + _PNAME + r"(?![\w'-])",
                         _FRAME_FLAGS)
_ONE_FOOD = re.compile(r"\bif\s+(?-i:I)\s+could\s+(?:only\s+)?eat\s+(?:just\s+|only\s+)?one\s+"
                       r"(?:thing|food|dish|meal)\s+(?:forever|for\s+ever|for\s+the\s+rest\s+of\s+"
                       r"my\s+life|every\s+day|for\s+life)" + _COMMA_OPT + r"it\s+would\s+"
                       r"(?:definitely\s+|probably\s+|totally\s+)?be\s+(?P<v>[^,.;:!?]+)",
                       _FRAME_FLAGS)
_ITS_MY_FAV = re.compile(r"(?:^|[\s,;-])(?:(?:it|that|this)\s+is|they\s+are)\s+(?:(?:definitely|"
                         r"probably|still|now|totally|really|officially)\s+)?my\s+(?:new\s+|all-time\s+|absolute\s+)"
                         r"?fav(?:ou?rite|e)(?:\s+(?:food|dish|meal|thing\s+to\s+eat))?\s*[.!]*$",
                         _FRAME_FLAGS)
_NOTHING_BEATS = re.compile(_LEAD + r"nothing\s+(?:beats|compares\s+to|tops)\s+(?P<v>[^,.;:!?]+)",
                            _FRAME_FLAGS)
_FAV_COLON = re.compile(_LEAD + r"(?:new\s+|current\s+|all-time\s+)?fav(?:ou?rite|e)\s+"
                        r"(?:food|dish|meal)\s*:\s*(?P<v>[^,.;:!?]+)", _FRAME_FLAGS)
_REPLACED = re.compile(r"(?P<v>[^,.;:!?]+?)\s+(?:has|have)\s+(?:now\s+|officially\s+|finally\s+)?"
                       r"replaced\s+(?P<old>[^,.;:!?]+?)\s+as\s+my\s+(?:new\s+)?(?:all-time\s+)?"
                       r"fav(?:ou?rite|e)\b", _FRAME_FLAGS)
_NOW_ITS = re.compile(r"\bused\s+to\s+(?:love|like|prefer)\s+[^,.;:!?]+?\s+(?:the\s+)?most\s*,?\s*"
                      r"but\s+now\s+(?:it\s+is|(?-i:I)\s+(?:love|prefer|like))\s+(?P<v>[^,.;:!?]+)",
                      _FRAME_FLAGS)
_HOBBY_IS = re.compile(_LEAD + r"(?P<v>[^,.;:!?]+?)\s+is\s+(?:(?P<my>my)|the|a)\s+(?:(?:favou?rite|"
                       r"main|only|new|current|biggest|one)\s+)?hobby\b(?P<rest>.*)$", _FRAME_FLAGS)
_HOBBY_APPOS = re.compile(r"(?P<v>[^,.;:!?]+?)\s*[,-]\s*my\s+(?:(?:favou?rite|main|new|current|"
                          r"biggest)\s+)+hobby\b", _FRAME_FLAGS)
_WEEKENDS = re.compile(_LEAD + r"(?:my\s+)?(?:weekends|evenings|sundays|saturdays|mornings|"
                       r"summers|winters|free\s+days|days\s+off)\s+are\s+(?:(?:all|mostly|usually|"
                       r"always|just)\s+)?(?:for|about|all\s+about|spent\s+on)\s+(?P<v>[^,.;:!?]+)",
                       _FRAME_FLAGS)
_FOR_OTHER = re.compile(r"\bfor\s+(?:my\s+\w+|him|her|them|(?-i:[A-Z][a-z]+))", re.I)
_FREE_TIME = re.compile(r"\bin\s+my\s+(?:free|spare|down)\s+time" + _COMMA_OPT
                        + r"(?-i:I)\s+(?:(?:mostly|usually|often|really|just|also)\s+)*"
                        r"(?:(?:like|love)\s+to\s+|enjoy\s+|love\s+|do\s+(?:a\s+lot\s+of\s+|lots\s+of\s+|some\s+)?|go\s+|play\s+)"
                        r"(?P<v>[^,.;:!?]+)", _FRAME_FLAGS)
_CAR_I_DRIVE = re.compile(r"\bthe\s+(?P<v>[^,.;:!?]+?)\s+(?:that\s+)?(?-i:I)\s+(?:drive|own|have)"
                          r"\b", _FRAME_FLAGS)
_MY_THING = re.compile(r"\s+(?P<adj>(?:(?:new|current|trusty|beloved|little|pet|baby|sweet|old|"
                       r"former|first|family|lovely|same)\s+)*)(?P<rest>[^,.;:!?]+)", re.I)
_GRIEF = re.compile(r"\b(?:miss|missed|memory|memories|rip|lost|died|passed|funeral)\b", re.I)
_PET_KIND = re.compile(r"(?P<kind>" + _PET_RE + r")(?:s|es)?(?:'s)?(?![\w-])", re.I)
_GONE = re.compile(r"\s+(?:(?:has|had|have|just|recently|sadly|finally|was|got|been)\s+)*"
                   r"(?:passed(?:\s+away)?|died|put\s+down|ran\s+away|went\s+missing|is\s+gone|"
                   r"stolen|totaled|totalled|written\s+off|scrapped|repossessed)\b", re.I)
# Past tenses that end no "-ed": "my dog woke me up" goes on with a verb, not a noun.
_IRREGULAR_PAST = frozenset("""
woke ate ran got went was bit slept made took came broke threw sat lay kept left gave found
stole chose hid fell caught dug drank swam tore wore won lost fought saw heard knew grew
""".split())


def _np_goes_on(word: str) -> bool:
    """Whether a lower-case word after a noun continues its noun phrase ("my dog walker",
    "my horse painting") rather than starting a verb phrase ("my dog woke me up")."""
    w = word.strip("'\".,!?;:").lower()
    if not w.isalpha() or not word[0].islower():
        return False
    return not (w in STOP_WORDS or w in _BOUNDARY or w in _IRREGULAR_PAST or
                w.endswith(("s", "ed", "ly")))
_DROP_SUBJECT = re.compile(_LEAD + r"(?:(?:just|finally|recently|also|officially|already|"
                           r"then)\s+)*(?:(?P<be>still|now|currently|happily|officially|"
                           r"no\s+longer)|(?P<verb>started|moved|relocated|joined|left|quit|"
                           r"switched|sold|bought|traded|picked|adopted|got|turned|retrained|"
                           r"landed|went|became|gave|took|handed|finished|graduated|broke|split|"
                           r"began|signed|resigned))\b", _FRAME_FLAGS)
_DROP_WORDS = frozenset("""
still now currently happily officially longer started moved relocated joined left quit switched
sold bought traded picked adopted got turned retrained landed went became gave took handed
finished graduated broke split began signed resigned
""".split())
_RHETORICAL = re.compile(r"(^|[.!?]\s+)(?:can\s+you\s+believe|did\s+(?-i:I)\s+(?:tell|mention\s+"
                         r"to)\s+you|guess\s+what)\s*,?\s*(?:that\s+)?([^?]*)\?", _FRAME_FLAGS)
_SENTENCE = re.compile(r"[^.!?\n;]+(?:[.!?]+|$)")
_FIRST_PERSON_WORD = re.compile(r"\b(?-i:I)\b|\b(?:me|my|mine|myself)\b", re.I)


def _gaz_find(kind: str, raw: str, last: bool = False) -> str | None:
    """The first (or last) gazetteer value among the words of `raw`."""
    ws = [w for _, w in _value_words(raw)]
    found = None
    for i in range(len(ws)):
        hit = _gaz_prefix(kind, ws[i:])
        if hit is not None:
            if not last:
                return hit[0]
            found = hit[0]
    return found


def _gaz_tail(kind: str, raw: str) -> str | None:
    """The gazetteer value that ends `raw` ("... the weekend on salsa dancing")."""
    ws = [w for _, w in _value_words(raw)]
    for n in (3, 2, 1):
        if len(ws) >= n:
            hit = _gaz_prefix(kind, ws[-n:])
            if hit is not None and hit[1] == n:
                return hit[0]
    return None


def _hedged(sentence: str, start: int) -> bool:
    """A hedge ("if", "wish", "would") earlier in the same clause as position `start`."""
    before = sentence[:start]
    cut = max(before.rfind(","), before.rfind(" but "), before.rfind(" - "))
    return _HEDGE.search(before[cut + 1 :] if cut >= 0 else before) is not None


def _who(m: re.Match, spk: str) -> str | None:
    """The subject a _WHO group names: the speaker, "<speaker>'s sister", or a name."""
    if m.group("i"):
        return spk
    name = m.group("relname") or m.group("name")
    if name:
        return _person_name(name)
    return _rel_subject(spk, _RELATIONS[m.group("rel").lower()])


def _person_name(name: str | None) -> str | None:
    if not name or name.lower() in NON_NAMES or name.lower() in _RELATIONS:
        return None
    return name.casefold()


_Add = Callable[..., None]  # add(slot, value, negated=False): a claim about the speaker


def _frame_claims(sent: str, spk: str, words: set[str], out: list[Claim]) -> None:
    """Claims of one sentence (not a question) stated obliquely, mostly about the speaker;
    each group of frames runs only when the text has a word it needs."""
    def add(slot: str, value: str | None, neg: bool = False) -> None:
        if value:
            out.append(Claim(spk, slot, value, neg))

    for frames in _FRAMES:
        frames(sent, spk, words, add, out)


def _role_age_frames(sent: str, spk: str, words: set[str], add: _Add,
                     out: list[Claim]) -> None:
    """ "Being a nurse is ...", "Being 50 means ...", "As a chef, I ...", "At 41 I ...",
    "Being a nurse, my mom works nights", "Zoe, who is 41, ..."."""
    if "being" in words and (m := _BEING.match(sent)):
        rest = [w for _, w in _value_words(m.group("rest"))]
        if rest and rest[0] in ("a", "an"):
            for k in (3, 2, 1):
                if len(rest) > k + 1 and re.fullmatch(_STATE_VERB, rest[k + 1]) and \
                        _is_occupation(" ".join(rest[1 : k + 1])):
                    add("role", " ".join(rest[1 : k + 1]))
                    break
        elif rest and (hit := _gaz_prefix("diet", rest, False)) and len(rest) > hit[1] and \
                re.fullmatch(_STATE_VERB, rest[hit[1]]):
            add("diet", hit[0])
        elif rest and (age := _age(rest[0])):
            k = 3 if rest[1:3] == ["years", "old"] else 1
            if len(rest) > k and re.fullmatch(_STATE_VERB, rest[k]):
                add("age", age)
    if "being" in words and (m := _BEING_WHO.match(sent)) and _is_occupation(m.group("v").lower()):
        if who := _who(m, spk):
            out.append(Claim(who, "role", " ".join(m.group("v").lower().split())))
    if "<num>" in words and (m := _WHO_IS_AGE.search(sent)) and (age := _age(m.group("v"))):
        if who := _who(m, spk):
            out.append(Claim(who, "age", age))
    if "<occ>" in words and (m := _AS_A.match(sent)) and _is_occupation(m.group("v").lower()):
        add("role", " ".join(m.group("v").lower().split()))
    if "<num>" in words and (m := _AT_AGE.match(sent)) and (age := _age(m.group("v"))) and \
            int(age) >= 13:
        add("age", age)


def _work_home_frames(sent: str, spk: str, words: set[str], add: _Add,
                      out: list[Claim]) -> None:
    """ "Work at Globex was busy", "My team at Globex ...", "Living in Oslo is ...", "Home is
    Oslo for me"."""
    if not words.isdisjoint(_WORK_WORDS):
        if (m := _WORK_AT.match(sent)) or (m := _LOVE_MY_JOB.search(sent)):
            t = _trim(m.group("v"), 5)
            if t and t[0][0].isupper() and t[1].split()[0] not in _NOT_EMPLOYER and \
                    not _hedged(sent, m.start("v")):
                add("employer", t[1], bool(m.groupdict().get("old")))
    if "living" in words and (m := _LIVING_IN.match(sent)):
        t = _place(m.group("v"))
        if t and t[0][0].isupper():
            add("home", t[1])
    if "home" in words and (m := _HOME_IS.match(sent)):
        t = _place(m.group("v"))
        if t and t[0][0].isupper():
            add("home", t[1])


def _partner_frames(sent: str, spk: str, words: set[str], add: _Add,
                    out: list[Claim]) -> None:
    """ "Sam and I have been together ...", "Sam and I broke up", "Sam, my partner, ...",
    "dating someone new, Sam", "Things ended with Sam"."""
    if "<andi>" in words and (m := _AND_I.search(sent)) and (name := _person_name(m.group("v"))):
        before = sent[: m.start()].lower().split()
        if not (before and (before[-1] in _RELATIONS or before[-1] in ("with", "to"))):
            if _COUPLE.match(m.group("tail")):
                add("partner", name)
            elif _UNCOUPLE.match(m.group("tail")):
                add("partner", name, True)
    if not words.isdisjoint(_PARTNER_WORDS) and (m := _APPOS_PARTNER.match(sent)):
        add("partner", _person_name(m.group("v")),
            (m.group("adj") or "").lower() in ("ex", "former", "late"))
    if "someone" in words and (m := _SOMEONE_NEW.search(sent)) and not _hedged(sent, m.start()):
        add("partner", _person_name(m.group("v")))
    if ("ended" in words or "over" in words or "work" in words) and \
            (m := _ENDED_WITH.match(sent)):
        add("partner", _person_name(m.group("v")), True)


def _food_frames(sent: str, spk: str, words: set[str], add: _Add,
                 out: list[Claim]) -> None:
    """ "If I could eat one thing forever it would be X", "X, it's my favourite", "Nothing
    beats X", "New favourite food: X", "X has replaced Y as my favourite"."""
    if "eat" in words and (m := _ONE_FOOD.search(sent)):
        t = _trim(m.group("v"), 3)
        add("favorite food", t[1] if t else None)
    fav = not words.isdisjoint(("favorite", "favourite", "fave"))
    if fav and (m := _ITS_MY_FAV.search(sent)) and not _hedged(sent, m.start()):
        before = [w for _, w in _value_words(sent[: m.start()])]
        dishes = {hit[0] for i in range(len(before))
                  if (hit := _gaz_prefix("dish", before[i:])) is not None}
        if len(dishes) == 1:  # the one dish the sentence names
            add("favorite food", dishes.pop())
    if "nothing" in words and (m := _NOTHING_BEATS.match(sent)):
        add("favorite food", _gaz_find("dish", m.group("v")))
    if fav and (m := _FAV_COLON.match(sent)):
        t = _trim(m.group("v"), 3)
        add("favorite food", t[1] if t else None)
    if "replaced" in words and (m := _REPLACED.search(sent)):
        add("favorite food", _gaz_find("dish", m.group("v"), last=True))
        add("favorite food", _gaz_find("dish", m.group("old")), True)
    if "used" in words and (m := _NOW_ITS.search(sent)):
        t = _gaz_find("dish", m.group("v"))
        add("favorite food" if t else "favorite", t or (_trim(m.group("v"), 3) or ("", ""))[1])


def _hobby_car_frames(sent: str, spk: str, words: set[str], add: _Add,
                      out: list[Claim]) -> None:
    """ "X is the hobby that keeps me sane", "X, my favourite hobby", "Weekends are for X",
    "In my free time I do X", "The Golf I drive ..."."""
    if "hobby" in words:
        if (m := _HOBBY_IS.match(sent)) and (m.group("my") or _FIRST_PERSON_WORD.search(
                m.group("rest"))):
            add("hobby", _gaz_find("hobby", m.group("v"), last=True))
        if m := _HOBBY_APPOS.search(sent):
            add("hobby", _gaz_tail("hobby", m.group("v")))
    if not words.isdisjoint(_WEEKEND_WORDS) and (m := _WEEKENDS.match(sent)) and \
            not _FOR_OTHER.search(m.group("v")):
        add("hobby", _gaz_find("hobby", m.group("v")))
    if ("free" in words or "spare" in words) and (m := _FREE_TIME.search(sent)):
        add("hobby", _gaz_find("hobby", m.group("v")))
    if "<car>" in words and (m := _CAR_I_DRIVE.search(sent)) and not _hedged(sent, m.start()):
        add("vehicle", _car(m.group("v")))


_FRAMES = (_role_age_frames, _work_home_frames, _partner_frames, _food_frames,
           _hobby_car_frames)


def _tidy(out: list[Claim]) -> tuple[Claim, ...]:
    """One claim per fact: favourite dishes are favourite food, a value said both ways
    ("I sold my Volvo": sold, and "my Volvo") is the negated one, and a value contained
    in a more specific one ("dog" / "dog max", "honda" / "honda civic") goes."""
    fixed = []
    for c in dict.fromkeys(out):
        if c.slot in ("favorite dish", "favorite meal") or (
                c.slot == "favorite" and _gaz_prefix("dish", c.value.split()) == (
                    c.value, len(c.value.split()))):
            c = Claim(c.subject, "favorite food", c.value, c.negated)
        fixed.append(c)
    fixed = list(dict.fromkeys(fixed))
    if len(fixed) < 2:
        return tuple(fixed)
    favs = {(c.subject, c.value, c.negated) for c in fixed if c.slot.startswith("favorite")}
    if favs:  # "I love X more than anything" says favourite; "likes X" adds nothing
        fixed = [c for c in fixed if not (c.slot == "likes" and
                                          (c.subject, c.value, c.negated) in favs)]
    keep = []
    for c in fixed:
        ws = set(c.value.split())
        drop = False
        for o in fixed:
            if o is c or o.subject != c.subject or o.slot != c.slot:
                continue
            ow = set(o.value.split())
            if o.negated and not c.negated and (ow == ws or ws < ow):
                drop = True  # "sold my Volvo XC40" also says "my Volvo XC40"
            elif o.negated == c.negated and ws < ow:
                drop = True
        if not drop:
            keep.append(c)
    return tuple(keep)


@lru_cache(maxsize=1 << 15)
def _claims(text: str, speaker: str) -> tuple[Claim, ...]:
    text = unicodedata.normalize("NFKC", text).replace("’", "'")
    toks = set(text.lower().translate(_PUNCT_SPACE).split())  # rule triggers, once per text
    toks.update([t.split("'", 1)[0] for t in toks if "'" in t])  # "dog's" triggers "dog"
    if _HAS_DIGIT(text) or not toks.isdisjoint(_NUMBER_WORDS):
        toks.add("<num>")
    if not toks.isdisjoint(_OCCUPATIONS) or _OCC_SUFFIX_RE(text):
        toks.add("<occ>")
    if not toks.isdisjoint(_GAZ["diet"]):
        toks.add("<diet>")
    if not toks.isdisjoint(_GAZ["car"]):
        toks.add("<car>")
    if not toks.isdisjoint(_PET_WORDS):
        toks.add("<pet>")
    if toks.isdisjoint(_ALL_TRIGGERS):
        return ()  # nothing any rule could match
    rules = _Rules(_pick(_P_RULES, _P_INDEX, _P_KEYS, toks),
                   _pick(_POSS_RULES, _POSS_INDEX, _POSS_KEYS, toks), toks)
    if " and i " in text.lower():
        toks.add("<andi>")
    if toks & _EXPANSIONS.keys():
        text = _CONTRACT.sub(_contraction, text)
    if "?" in text and not toks.isdisjoint(("believe", "tell", "mention", "guess")):
        text = _RHETORICAL.sub(r"\1\2.", text)  # "Can you believe I'm 35?" states it
    out: list[Claim] = []
    clauses = rules.person or rules.poss or not toks.isdisjoint(_CLAUSE_TRIGGERS)
    drop = not toks.isdisjoint(_DROP_WORDS)
    for clause, question, before in _clauses(text) if clauses else ():
        if question:
            continue
        _clause_claims(clause, speaker, rules, out)
        if drop and (m := _DROP_SUBJECT.match(clause)) and _opens(before):  # "Moved to Oslo!"
            lead = "I am " if m.group("be") else "I "
            start = m.start("be") if m.group("be") else m.start("verb")
            _clause_claims(lead + clause[start:], speaker, rules, out)
    if not toks.isdisjoint(_FRAME_TRIGGERS):
        for sm in _SENTENCE.finditer(text):
            sent = sm.group(0).strip()
            if sent and not sent.endswith("?"):
                _frame_claims(sent.rstrip(".!"), speaker, toks, out)
    return _tidy(out)


# -- terse answers: "27, sadly." after "How old are you?" ----------------------------------

# A question about someone else: "How old is your dog?", "Where does she work?", "Is Sam ok?"
_ABOUT_OTHER = re.compile(r"\b(?:he|she|they|his|her|their|him|them|its)\b|\byour\s+(?:"
                          + _REL_RE + "|" + _PET_RE + r")\b|(?<=\w\s)(?-i:[A-Z][a-z]+)", re.I)
# What a question to the speaker asks about (first match wins).
_ASKS = tuple((slot, re.compile(p, re.I)) for slot, p in (
    ("age", r"\bhow\s+old\b|\byour\s+age\b|\bage\s+are\s+you\b"),
    ("favorite food", r"\bfav(?:ou?rite|e)\s+(?:food|dish|meal)\b|\blove\s+eating\b|"
                      r"\blike\s+to\s+eat\b"),
    ("diet", r"\bdiet(?:ary)?\b|\bdo\s+you\s+eat\s+meat\b"),
    ("hobby", r"\bhobb(?:y|ies)\b|\bfor\s+fun\b|\b(?:free|spare)\s+time\b"),
    ("vehicle", r"\bwhat\b.*\b(?:drive|car)\b"),
    ("pet", r"\bpets?\b|\banimals?\b"),
    ("partner", r"\bseeing\s+anyone\b|\bdating\b|\byour\s+(?:partner|boyfriend|girlfriend|wife|"
                r"husband|spouse)\b|\bin\s+a\s+relationship\b"),
    ("role", r"\bwhat\s+do\s+you\s+do\b|\byour\s+(?:job|line\s+of\s+work|occupation|profession)"
             r"\b|\bwhat\s+(?:is|'s)\s+your\s+job\b"),
    ("employer", r"\b(?:where|which|what)\b.*\b(?:work|working|employ\w*|company|firm)\b|"
                 r"\bsame\s+(?:place|company|job)\b"),
    ("home", r"\bwhere\b.*\b(?:live|living|home|based|located)\b|\bwhich\s+(?:city|town)\b"),
))
# Words around a terse answer that do not change it ("Still the Kia.", "Definitely pho!").
_ANSWER_FILLER = frozenset("""
still definitely mostly probably just always sadly lately really honestly haha lol yes yeah
yep oh well hmm um currently now these days right at the moment mainly usually only
""".split())


@lru_cache(maxsize=1 << 12)
def _answer(question: str, text: str, spk: str) -> tuple[Claim, ...]:
    """The claim a terse answer makes in reply to a question about the speaker."""
    q = unicodedata.normalize("NFKC", question).replace("’", "'")
    if "?" not in q or _ABOUT_OTHER.search(q):
        return ()
    slot = next((s for s, p in _ASKS if p.search(q)), None)
    ws = [w for w in _value_words(unicodedata.normalize("NFKC", text).replace("’", "'"))
          if w[1] not in _ANSWER_FILLER]
    if slot is None or not ws or len(ws) > 5 or any(w[1] in _NEG_WORDS for w in ws):
        return ()
    low = [w for _, w in ws]
    orig = " ".join(o for o, _ in ws)
    value: str | None = None
    if slot == "age":
        value = _age(low[0]) if len(low) == 1 or low[1:] in (["years"], ["years", "old"]) \
            else None
    elif slot in ("employer", "home"):
        if low[0] in ("at", "with", "in", "for"):
            ws, orig = ws[1:], " ".join(o for o, _ in ws[1:])
        t = _trim(orig, 4) if ws and all(o[0].isupper() for o, _ in ws) else None
        value = t[1] if t and (slot == "home" or t[1].split()[0] not in _NOT_EMPLOYER) else None
    elif slot == "partner":
        if low[:1] == ["with"]:
            ws = ws[1:]
        value = _person_name(ws[0][0]) if len(ws) == 1 and ws[0][0][:1].isupper() else None
    elif slot == "role":
        rest = low[1:] if low[0] in ("a", "an") else low
        value = " ".join(rest) if rest and _is_occupation(" ".join(rest)) else None
    elif slot == "vehicle":
        rest = ws[1:] if low[0] in ("a", "an", "the", "my") else ws
        car = _car(" ".join(o for o, _ in rest)) if rest else None
        value = car if car and len(car.split()) >= len(rest) else None
    else:
        kind = {"favorite food": "dish", "diet": "diet", "hobby": "hobby", "pet": "pet"}[slot]
        rest = low[1:] if low[0] in ("a", "an", "the", "my", "our") else low
        if kind == "pet":
            p = " ".join(rest)
            value = _PETS.get(p) or _PETS.get(p[:-1] if p.endswith("s") else p)
        else:
            hit = _gaz_prefix(kind, rest) if rest else None
            value = hit[0] if hit and hit[1] == len(rest) else None
    return (Claim(spk, slot, value),) if value else ()


def extract_claims(text: str, speaker: str | None, question: str | None = None) -> list[Claim]:
    """(subject, slot, value) statements of a text, by a small rule table per slot and a
    generic "my <noun> is <value>" fallback. First person is the speaker (casefolded, ""
    when unknown), "my sister" is "<speaker>'s sister", a name is that person. Questions,
    hypotheticals and plain past states yield nothing: a missed claim is safe, a wrong one
    can close a true fact's validity. `question`, the turn this one answers (by someone
    else), types a terse answer: "27, sadly." after "How old are you?" says age 27."""
    spk = unicodedata.normalize("NFKC", speaker or "").casefold().strip()
    out = _claims(text, spk)
    if not out and question and len(text) < 60:
        out = _answer(question, text, spk)
    return list(out)
