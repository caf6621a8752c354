"""A small compositional English-Italian grammar: parallel sentences with exact translations.

Every sentence is built from the same choices in both languages, so the Italian side is the one
translation of the English side (and back): subject-verb agreement, gender/number agreement of articles,
possessives and adjectives, articulated prepositions (sul, nella, all'), numbers spelled out in words.
`make_splits` holds out whole combinations (subject, verb, object ...) for dev and test, so those
sentences never occur in train, while all their words do.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# ---------------------------------------------------------------- lexicon
NUMBERS = dict(enumerate("one two three four five six seven eight nine ten eleven twelve".split(), 1))
NUMBERS_IT = dict(enumerate("una due tre quattro cinque sei sette otto nove dieci undici dodici".split(), 1))

# en_sg | en_pl | it_sg | it_pl | gender (sg/pl when they differ) | tags | adjective groups
NOUNS_TABLE = """
doctor | doctors | medico | medici | m | person | -
man | men | uomo | uomini | m | person | -
woman | women | donna | donne | f | person | -
boy | boys | ragazzo | ragazzi | m | person | -
girl | girls | ragazza | ragazze | f | person | -
child | children | bambino | bambini | m | person | -
student | students | studente | studenti | m | person | -
father | - | padre | - | m | person family | -
mother | - | madre | - | f | person family | -
brother | brothers | fratello | fratelli | m | person family | -
sister | sisters | sorella | sorelle | f | person family | -
grandmother | - | nonna | - | f | person family | -
- | parents | - | genitori | m | person family | -
cat | cats | gatto | gatti | m | animal | colour size age
dog | dogs | cane | cani | m | animal | colour size age
horse | horses | cavallo | cavalli | m | animal | colour size age
bird | birds | uccello | uccelli | m | animal | colour size
apple | apples | mela | mele | f | food fruit wash | fruitcolour size fresh
orange | oranges | arancia | arance | f | food fruit | size fresh
cake | cakes | torta | torte | f | food | size fresh
sandwich | sandwiches | panino | panini | m | food | size fresh
egg | eggs | uovo | uova | m/f | food cook | size fresh
pizza | pizzas | pizza | pizze | f | food cook | size temp
bread | - | pane | - | m | food mass | fresh
cheese | - | formaggio | - | m | food mass | fresh
soup | - | zuppa | - | f | food mass cook | temp
coffee | coffees | caffè | caffè | m | drink | temp
tea | - | tè | - | m | drink mass | temp
water | - | acqua | - | f | drink mass | temp
milk | - | latte | - | m | drink mass | temp fresh
wine | - | vino | - | m | drink mass | wine
book | books | libro | libri | m | read open thing write portable | colour size age
newspaper | newspapers | giornale | giornali | m | read thing portable | age
letter | letters | lettera | lettere | f | read write portable | length
key | keys | chiave | chiavi | f | thing portable | size age
umbrella | umbrellas | ombrello | ombrelli | m | thing portable | colour size age
hat | hats | cappello | cappelli | m | thing wash portable | colour age
shoe | shoes | scarpa | scarpe | f | thing wash portable | colour age
shirt | shirts | camicia | camicie | f | thing wash portable | colour age
phone | phones | telefono | telefoni | m | thing portable | colour age
ball | balls | palla | palle | f | thing portable | colour size
bag | bags | borsa | borse | f | thing open container portable | colour size age
box | boxes | scatola | scatole | f | thing open container portable | colour size
glass | glasses | bicchiere | bicchieri | m | thing wash portable | size
plate | plates | piatto | piatti | m | thing wash portable | colour size
car | cars | macchina | macchine | f | thing vehicle wash | colour size age
bicycle | bicycles | bicicletta | biciclette | f | thing vehicle wash | colour age
table | tables | tavolo | tavoli | m | thing surface | colour size age
chair | chairs | sedia | sedie | f | thing surface | colour age
bed | beds | letto | letti | m | surface | size
sofa | sofas | divano | divani | m | surface | colour age
drawer | drawers | cassetto | cassetti | m | container | -
fridge | fridges | frigorifero | frigoriferi | m | container | -
door | doors | porta | porte | f | open fixture | colour
window | windows | finestra | finestre | f | open fixture | size
"""

# English | Italian masculine singular (the other forms follow the regular endings)
ADJECTIVES_TABLE = """
colour: red rosso, white bianco, black nero, green verde, blue blu, yellow giallo
fruitcolour: red rosso, green verde, yellow giallo
wine: red rosso, white bianco
size: big grande, small piccolo
age: new nuovo, old vecchio
fresh: fresh fresco
temp: hot caldo, cold freddo
length: long lungo, short breve
mood: tired stanco, happy felice, sad triste, busy occupato, ready pronto, tall alto, young giovane, \
sick malato, angry arrabbiato, late in_ritardo
"""

# base | 3sg | past (- when it equals the base) | infinitive | present forms (- = regular) | participle | objects
VERBS_TABLE = """
buy | buys | bought | comprare | - | comprato | food drink thing read animal
eat | eats | ate | mangiare | - | mangiato | food
drink | drinks | drank | bere | bevo bevi beve beviamo bevete bevono | bevuto | drink
read | reads | - | leggere | - | letto | read
write | writes | wrote | scrivere | - | scritto | write
see | sees | saw | vedere | - | visto | person animal thing
cook | cooks | cooked | cucinare | - | cucinato | cook
open | opens | opened | aprire | - | aperto | open
close | closes | closed | chiudere | - | chiuso | open
wash | washes | washed | lavare | - | lavato | wash
find | finds | found | trovare | - | trovato | thing read animal
bring | brings | brought | portare | - | portato | food drink thing read
sell | sells | sold | vendere | - | venduto | food thing read animal
have | has | - | avere | ho hai ha abbiamo avete hanno | avuto | thing animal read food
look_for | looks_for | looked_for | cercare | - | cercato | thing read animal person
clean | cleans | cleaned | pulire | isc | pulito | wash surface
call | calls | called | chiamare | - | chiamato | person
help | helps | helped | aiutare | - | aiutato | person
draw | draws | drew | disegnare | - | disegnato | animal thing
"""

# English "at" form | English "to" form (- if none) | Italian (both)
PLACES_TABLE = """
in the kitchen | to the kitchen | in cucina
in the garden | to the garden | in giardino
in the living room | to the living room | in salotto
at home | home | a casa
at school | to school | a scuola
at work | to work | al lavoro
in the office | to the office | in ufficio
in the library | to the library | in biblioteca
in the park | to the park | al parco
at the market | to the market | al mercato
at the supermarket | to the supermarket | al supermercato
at the station | to the station | alla stazione
at the restaurant | to the restaurant | al ristorante
at the beach | to the beach | al mare
at the cinema | to the cinema | al cinema
in the hospital | to the hospital | in ospedale
at the bank | to the bank | in banca
in the car | - | in macchina
"""

NAMES = {"Tom": "m", "Marco": "m", "Paolo": "m", "Anna": "f", "Laura": "f", "Sara": "f"}
# person index: 0 I, 1 you (sg), 2 he/she/it, 3 we, 4 you (pl, unused), 5 they
PRONOUNS = {"I": (0, "io"), "you": (1, "tu"), "he": (2, "lui"), "she": (2, "lei"), "we": (3, "noi"),
            "they": (5, "loro")}
ESSERE = "sono sei è siamo siete sono".split()
ESSERE_PAST = "ero eri era eravamo eravate erano".split()
AVERE = "ho hai ha abbiamo avete hanno".split()
ANDARE = "vado vai va andiamo andate vanno".split()
VOLERE = "voglio vuoi vuole vogliamo volete vogliono".split()
POSSESSIVES = {"my": "mio mia miei mie".split(), "your": "tuo tua tuoi tue".split()}
ENDINGS = {"are": "o i a iamo ate ano", "ere": "o i e iamo ete ono", "ire": "o i e iamo ite ono",
           "isc": "isco isci isce iamo ite iscono"}
PREPOSITIONS = {  # Italian preposition fused with each definite article (il lo l' la i gli le)
    "su": "sul sullo sull' sulla sui sugli sulle".split(), "in": "nel nello nell' nella nei negli nelle".split(),
    "a": "al allo all' alla ai agli alle".split()}
ARTICLES = "il lo l' la i gli le".split()
HOURS = {1: ("at one", "all'una")} | {h: (f"at {NUMBERS[h]}", f"alle {NUMBERS_IT[h]}") for h in range(2, 13)}
TIMES_PRESENT = {"every day": "ogni giorno", "every morning": "ogni mattina", "every evening": "ogni sera",
                 "on Sundays": "la domenica"}
TIMES_PAST = {"yesterday": "ieri", "last night": "ieri sera", "this morning": "stamattina",
              "on Monday": "lunedì", "on Saturday": "sabato"}


@dataclass(frozen=True)
class Noun:
    en: tuple[str | None, str | None]  # singular, plural
    it: tuple[str | None, str | None]
    gender: tuple[str, str]
    tags: frozenset[str]
    adjectives: tuple[str, ...]  # adjective group names


@dataclass(frozen=True)
class Verb:
    en: tuple[str, str, str]  # base, 3sg, past (spaces allowed: "look for")
    has_past: bool  # False when the English past equals the base ("read"), which would be ambiguous
    infinitive: str
    it_present: tuple[str, ...]
    participle: str
    objects: frozenset[str]


def _rows(table: str) -> Iterator[list[str]]:
    for line in table.strip().splitlines():
        yield [c.strip() for c in line.split("|")]


def _opt(word: str) -> str | None:
    return None if word == "-" else word.replace("_", " ")


def conjugate(infinitive: str, forms: str = "-") -> tuple[str, ...]:
    """Italian present tense, six persons; `forms` lists irregular ones or says `isc`."""
    if forms not in ("-", "isc"):
        return tuple(forms.split())
    stem, ending = infinitive[:-3], "isc" if forms == "isc" else infinitive[-3:]
    out = []
    for suffix in ENDINGS[ending].split():
        if suffix.startswith("i") and stem.endswith("i"):
            suffix = suffix[1:]  # mangi-i -> mangi
        elif suffix.startswith("i") and ending == "are" and stem[-1] in "cg":
            suffix = "h" + suffix  # cerc-i -> cerchi
        out.append(stem + suffix)
    return tuple(out)


NOUNS = [
    Noun((_opt(r[0]), _opt(r[1])), (_opt(r[2]), _opt(r[3])), (r[4][0], r[4][-1]), frozenset(r[5].split()),
         tuple(a for a in r[6].split() if a != "-"))
    for r in _rows(NOUNS_TABLE)
]
ADJECTIVES: dict[str, list[tuple[str, str]]] = {}
for _line in ADJECTIVES_TABLE.replace("\\\n", "").strip().splitlines():
    _group, _pairs = _line.split(":")
    ADJECTIVES[_group] = [tuple(p.replace("_", " ").split(maxsplit=1)) for p in _pairs.split(",")]
VERBS = [
    Verb((_opt(r[0]), _opt(r[1]), _opt(r[2]) or _opt(r[0])), r[2] != "-", r[3], conjugate(r[3], r[4]), r[5],
         frozenset(r[6].split()))
    for r in _rows(VERBS_TABLE)
]
PLACES = [(r[0], _opt(r[1]), r[2]) for r in _rows(PLACES_TABLE)]


def inflect(adjective: str, gender: str, plural: bool) -> str:
    """Italian adjective agreeing with gender ('m'/'f') and number, from its masculine singular."""
    if " " in adjective or adjective[-1] not in "oe":
        return adjective  # blu, in ritardo
    if adjective.endswith("e"):
        return adjective[:-1] + "i" if plural else adjective
    stem = adjective[:-1]
    if not plural:
        return stem + ("a" if gender == "f" else "o")
    if stem.endswith("i"):
        return stem if gender == "m" else stem + "e"  # vecchi, vecchie
    if stem[-1] in "cg":
        stem += "h"  # bianchi, lunghe
    return stem + ("i" if gender == "m" else "e")


def _impure(word: str) -> bool:
    """Words taking lo/gli/uno: s + consonant, z, gn, ps."""
    w = word.lower()
    return (w[0] == "s" and w[1:2] not in tuple("aeiou")) or w[0] == "z" or w[:2] in ("gn", "ps")


def article(next_word: str, gender: str, plural: bool, definite: bool = True) -> str:
    """Italian article for the word that follows it (l' and un' are glued on by `join`)."""
    vowel = next_word[0].lower() in "aeiouh"
    if not definite:
        if gender == "f":
            return "un'" if vowel else "una"
        return "uno" if _impure(next_word) else "un"
    if gender == "f":
        return "le" if plural else ("l'" if vowel else "la")
    if plural:
        return "gli" if vowel or _impure(next_word) else "i"
    return "l'" if vowel else ("lo" if _impure(next_word) else "il")


def fuse(preposition: str, art: str) -> str:
    """su + il -> sul, in + la -> nella, a + l' -> all'."""
    return PREPOSITIONS[preposition][ARTICLES.index(art)]


def join(words: list[str]) -> str:
    """Join words, gluing elided forms (l', un', all') to the next word."""
    return " ".join(words).replace("' ", "'")


def sentence(words: list[str], mark: str = ".") -> str:
    text = join([w for w in words if w])
    return text[0].upper() + text[1:] + mark


def en_indefinite(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


# ---------------------------------------------------------------- phrases
@dataclass(frozen=True)
class Phrase:
    en: str
    it: str
    head: str  # what held-out combinations are made of
    person: int = 2
    gender: str = "m"
    dropped: bool = False  # Italian subject pronoun left out (pro-drop)

    @property
    def plural(self) -> bool:
        return self.person in (3, 4, 5)


def noun_phrase(rng: random.Random, noun: Noun, *, dets: tuple[str, ...] = ("the", "a", "num", "my", "your"),
                adjective_p: float = 0.4, plural: bool | None = None) -> Phrase:
    """A noun with determiner, maybe a number and an adjective, agreeing in both languages."""
    if plural is None:
        plural = noun.en[0] is None or (noun.en[1] is not None and rng.random() < 0.4)
    options = [d for d in dets if d not in (("a",) if plural else ("num",)) and not ("mass" in noun.tags and d == "a")]
    det = rng.choice(options)
    en_noun, it_noun, gender = noun.en[plural], noun.it[plural], noun.gender[plural]
    en_adj = it_adj = ""
    if noun.adjectives and rng.random() < adjective_p:
        en_adj, it_m = rng.choice([a for g in noun.adjectives for a in ADJECTIVES[g]])
        it_adj = inflect(it_m, gender, plural)
    en_words, it_words = [en_adj, en_noun], [it_noun, it_adj]
    if det == "num":
        n = rng.randint(2, 12)
        en_words.insert(0, NUMBERS[n])
        it_words.insert(0, NUMBERS_IT[n])
    elif det in POSSESSIVES:
        en_words.insert(0, det)
        it_words.insert(0, POSSESSIVES[det][2 * plural + (gender == "f")])
        if plural or "family" not in noun.tags:
            it_words.insert(0, article(it_words[0], gender, plural))
    else:
        en_words.insert(0, det if det == "the" else en_indefinite(en_words[0] or en_words[1]))
        it_words.insert(0, article(it_noun, gender, plural, definite=det == "the"))
    return Phrase(join([w for w in en_words if w]), join([w for w in it_words if w]),
                  noun.en[0] or noun.en[1] or "", 5 if plural else 2, gender)


def nouns_with(*tags: str) -> list[Noun]:
    return [n for n in NOUNS if n.tags & set(tags)]


PEOPLE = nouns_with("person")
COUNTABLE_TAGS = {t for n in NOUNS if n.en[1] and "person" not in n.tags for t in n.tags}


def person(rng: random.Random, pronouns: bool = True, gendered: bool = False) -> Phrase:
    """A subject or object that is a person: pronoun, name or noun phrase (the doctor, my sisters)."""
    kind = rng.choices(["pronoun", "name", "noun"], [3 if pronouns else 0, 2, 5])[0]
    if kind == "pronoun":
        en = rng.choice([p for p in PRONOUNS if not gendered or p in ("he", "she")])
        p, it = PRONOUNS[en]
        return Phrase(en, it, en, p, "f" if en == "she" else "m", dropped=en not in ("he", "she"))
    if kind == "name":
        name = rng.choice(list(NAMES))
        return Phrase(name, name, name, 2, NAMES[name])
    noun = rng.choice(PEOPLE)
    dets = ("my", "your") if "family" in noun.tags else ("the",)
    return noun_phrase(rng, noun, dets=dets, adjective_p=0)


def subject_it(s: Phrase) -> str:
    return "" if s.dropped else s.it


def location(rng: random.Random, furniture: bool = True) -> tuple[str, str, str]:
    """(en, it, head): a place (in the kitchen) or a preposition with a piece of furniture (on the table)."""
    if not furniture or rng.random() < 0.4:
        en, _, it = rng.choice(PLACES)
        return en, it, en
    noun = rng.choice(nouns_with("surface", "container", "fixture"))
    preps = {"surface": [("on", "su"), ("under", "sotto"), ("near", "vicino a")],
             "container": [("in", "in"), ("near", "vicino a")], "fixture": [("near", "vicino a")]}
    en_p, it_p = rng.choice([p for t, ps in preps.items() if t in noun.tags for p in ps])
    art = article(noun.it[0], noun.gender[0], False)
    it_np = noun.it[0]
    if it_p == "sotto":
        it = join(["sotto", art, it_np])
    else:
        words = it_p.split()
        it = join([*words[:-1], fuse(words[-1], art), it_np])
    return f"{en_p} the {noun.en[0]}", it, noun.en[0]


def time_phrase(rng: random.Random, past: bool) -> tuple[str, str]:
    if rng.random() < 0.45:
        h = rng.randint(1, 12)
        en, it = HOURS[h]
        if h > 1 and rng.random() < 0.25:
            return en.replace("at ", "at half past "), it + " e mezza"
        return en, it
    return rng.choice(list((TIMES_PAST if past else TIMES_PRESENT).items()))


# ---------------------------------------------------------------- templates
@dataclass(frozen=True)
class Pair:
    en: str
    it: str
    key: tuple[str, ...]  # the combination held out as a whole for dev/test
    template: str


def _en_verb(verb: Verb, s: Phrase, tense: str, negative: bool) -> str:
    base, third, past = verb.en
    if tense == "past":
        return f"did not {base}" if negative else past
    if negative:
        return f"{'does' if s.person == 2 else 'do'} not {base}"
    return third if s.person == 2 else base


def _it_verb(verb: Verb, s: Phrase, tense: str, negative: bool) -> str:
    form = f"{AVERE[s.person]} {verb.participle}" if tense == "past" else verb.it_present[s.person]
    return f"non {form}" if negative else form


def _object(rng: random.Random, verb: Verb) -> Phrase:
    nouns = [n for n in NOUNS if n.tags & verb.objects and "person" not in n.tags]
    if "person" in verb.objects and (not nouns or rng.random() < 0.6):
        return person(rng, pronouns=False)
    return noun_phrase(rng, rng.choice(nouns))


def _extras(rng: random.Random, past: bool, place_p: float = 0.35, time_p: float = 0.35) -> tuple[list, list]:
    en, it = [], []
    if rng.random() < place_p:
        p = rng.choice(PLACES)
        en.append(p[0])
        it.append(p[2])
    if rng.random() < time_p:
        t = time_phrase(rng, past)
        en.append(t[0])
        it.append(t[1])
    return en, it


def t_action(rng: random.Random) -> Pair:
    """Tom buys three red apples at the market at seven. / Tom compra tre mele rosse al mercato alle sette."""
    verb = rng.choice(VERBS)
    s = person(rng)
    o = _object(rng, verb)
    tense = "past" if verb.has_past and rng.random() < 0.35 else "present"
    negative = rng.random() < 0.15
    en_x, it_x = _extras(rng, tense == "past")
    en = [s.en, _en_verb(verb, s, tense, negative), o.en, *en_x]
    it = [subject_it(s), _it_verb(verb, s, tense, negative), o.it, *it_x]
    return Pair(sentence(en), sentence(it), ("svo", s.head, verb.en[0], o.head), "action")


def t_want(rng: random.Random) -> Pair:
    """Anna wants to read a new book. / Anna vuole leggere un libro nuovo."""
    verb = rng.choice([v for v in VERBS if v.infinitive != "avere"])
    s = person(rng)
    o = _object(rng, verb)
    negative = rng.random() < 0.2
    en_v = f"{'does' if s.person == 2 else 'do'} not want" if negative else ("wants" if s.person == 2 else "want")
    it_v = ("non " if negative else "") + VOLERE[s.person] + " " + verb.infinitive
    en_x, it_x = _extras(rng, False, time_p=0.2)
    en = [s.en, en_v, "to", verb.en[0], o.en, *en_x]
    it = [subject_it(s), it_v, o.it, *it_x]
    return Pair(sentence(en), sentence(it), ("svo", s.head, verb.en[0], o.head), "want")


def t_how_many(rng: random.Random) -> Pair:
    """How many apples did Tom buy? / Quante mele ha comprato Tom?"""
    verb = rng.choice([v for v in VERBS if v.objects & COUNTABLE_TAGS])
    noun = rng.choice([n for n in NOUNS if n.tags & verb.objects and n.en[1] and "person" not in n.tags])
    o = noun_phrase(rng, noun, dets=("the",), plural=True)
    en_obj, it_obj = o.en.removeprefix("the "), o.it.split(" ", 1)[1]
    s = person(rng)
    past = verb.has_past and rng.random() < 0.35
    en_aux = "did" if past else ("does" if s.person == 2 else "do")
    en = ["how many", en_obj, en_aux, s.en, verb.en[0]]
    it = ["quanti" if o.gender == "m" else "quante", it_obj, _it_verb(verb, s, "past" if past else "", False),
          subject_it(s)]
    return Pair(sentence(en, "?"), sentence(it, "?"), ("svo", s.head, verb.en[0], o.head), "how_many")


def t_go(rng: random.Random) -> Pair:
    """My sisters went to the market yesterday. / Le mie sorelle sono andate al mercato ieri."""
    past = rng.random() < 0.4
    s = person(rng, gendered=past)  # the Italian participle agrees with the subject: gender must be known
    _, en_place, it_place = rng.choice([p for p in PLACES if p[1]])
    negative = rng.random() < 0.15
    if past:
        en_v = "did not go" if negative else "went"
        it_v = f"{ESSERE[s.person]} {inflect('andato', s.gender, s.plural)}"
    else:
        en_v = f"{'does' if s.person == 2 else 'do'} not go" if negative else ("goes" if s.person == 2 else "go")
        it_v = ANDARE[s.person]
    it_v = "non " + it_v if negative else it_v
    en_x, it_x = _extras(rng, past, place_p=0, time_p=0.5)
    en = [s.en, en_v, en_place, *en_x]
    it = [subject_it(s), it_v, it_place, *it_x]
    return Pair(sentence(en), sentence(it), ("go", s.head, en_place), "go")


def _be(s: Phrase, past: bool, negative: bool) -> tuple[str, str]:
    en = ("was" if s.person in (0, 2) else "were") if past else {0: "am", 2: "is"}.get(s.person, "are")
    it = (ESSERE_PAST if past else ESSERE)[s.person]
    return (f"{en} not", f"non {it}") if negative else (en, it)


def t_be_adjective(rng: random.Random) -> Pair:
    """The girls are tired. / Le ragazze sono stanche. The car is new. / La macchina è nuova."""
    if rng.random() < 0.5:
        s = person(rng, gendered=True)
        en_adj, it_adj = rng.choice(ADJECTIVES["mood"])
    else:
        noun = rng.choice([n for n in NOUNS if n.adjectives])
        s = noun_phrase(rng, noun, dets=("the", "my", "your"), adjective_p=0)
        en_adj, it_adj = rng.choice([a for g in noun.adjectives for a in ADJECTIVES[g]])
    en_v, it_v = _be(s, rng.random() < 0.25, rng.random() < 0.15)
    en = [s.en, en_v, en_adj]
    it = [s.it, it_v, inflect(it_adj, s.gender, s.plural)]
    return Pair(sentence(en), sentence(it), ("adj", s.head, en_adj), "be_adjective")


def t_be_location(rng: random.Random) -> Pair:
    """My keys are in the bag. / Le mie chiavi sono nella borsa."""
    people = rng.random() < 0.4
    if people:
        s = person(rng, gendered=True)
    else:
        s = noun_phrase(rng, rng.choice(nouns_with("animal", "portable")), dets=("the", "my", "your"))
    en_loc, it_loc, head = location(rng, furniture=not people)
    en_v, it_v = _be(s, rng.random() < 0.25, rng.random() < 0.1)
    return Pair(sentence([s.en, en_v, en_loc]), sentence([s.it, it_v, it_loc]), ("loc", s.head, head),
                "be_location")


def t_there_is(rng: random.Random) -> Pair:
    """There are three cats under the table. / Ci sono tre gatti sotto il tavolo."""
    noun = rng.choice([n for n in nouns_with("animal", "portable", "food") if "mass" not in n.tags])
    o = noun_phrase(rng, noun, dets=("a", "num"))
    en_loc, it_loc, head = location(rng)
    en = ["there are" if o.plural else "there is", o.en, en_loc]
    it = ["ci sono" if o.plural else "c'è", o.it, it_loc]
    return Pair(sentence(en), sentence(it), ("there", o.head, head), "there_is")


def t_where(rng: random.Random) -> Pair:
    """Where are my keys? / Dove sono le mie chiavi?"""
    if rng.random() < 0.3:
        s = person(rng, pronouns=False)
    else:
        s = noun_phrase(rng, rng.choice(nouns_with("animal", "portable")), dets=("the", "my", "your"))
    en = ["where are" if s.plural else "where is", s.en]
    it = ["dove sono" if s.plural else "dov'è", s.it]
    return Pair(sentence(en, "?"), sentence(it, "?"), ("where", s.head), "where")


TEMPLATES = {t_action: 8, t_want: 2, t_how_many: 1.5, t_go: 2, t_be_adjective: 2, t_be_location: 2,
             t_there_is: 1.5, t_where: 1}


def random_pairs(seed: int = 0) -> Iterator[Pair]:
    """An endless, deterministic stream of random sentence pairs (with repeats)."""
    rng = random.Random(seed)
    templates, weights = list(TEMPLATES), list(TEMPLATES.values())
    while True:
        yield rng.choices(templates, weights)[0](rng)


def split_of(key: tuple[str, ...], seed: int = 0, dev: float = 0.05, test: float = 0.1) -> str:
    """'train', 'dev' or 'test' for a combination; every sentence made of it lands in the same split."""
    u = zlib.crc32("|".join((str(seed), *key)).encode()) / 2**32
    return "test" if u < test else "dev" if u < test + dev else "train"


def make_splits(sizes: Mapping[str, int], seed: int = 0, known_words: bool = True,
                max_draws: int = 1_000_000) -> dict[str, list[Pair]]:
    """Distinct pairs for each split in `sizes` (train, dev, test); dev/test combinations never occur in train.

    With `known_words`, dev and test only take sentences whose words (both languages) all occur in train,
    so a model is tested on new combinations, never on words it could not have heard.
    """
    out: dict[str, list[Pair]] = {name: [] for name in sizes}
    seen: set[str] = set()
    known: tuple[set[str], set[str]] | None = None  # train words, English and Italian

    def fill(names: set[str]) -> None:
        todo = sum(sizes[n] - len(out[n]) for n in names)
        for draw, pair in enumerate(random_pairs(seed)):
            if todo == 0:
                return
            if draw == max_draws:
                raise RuntimeError(f"{max_draws} draws gave too few distinct pairs for {sorted(names)}: "
                                   f"{ {n: len(out[n]) for n in names} } of {dict(sizes)}")
            name = split_of(pair.key, seed)
            if name not in names or len(out[name]) == sizes[name] or pair.en in seen:
                continue
            if known and not (vocabulary([pair.en]) <= known[0] and vocabulary([pair.it]) <= known[1]):
                continue
            seen.add(pair.en)
            out[name].append(pair)
            todo -= 1

    if known_words and "train" in sizes:
        fill({"train"})
        known = vocabulary([p.en for p in out["train"]]), vocabulary([p.it for p in out["train"]])
    fill(set(sizes) - {"train"} if known is not None else set(sizes))
    return out


def words(text: str) -> list[str]:
    """Lower-cased words of a sentence (punctuation dropped, l'acqua -> l' acqua)."""
    text = text.lower().replace("'", "' ")
    return ["".join(c for c in w if c.isalpha() or c == "'") for w in text.split() if any(c.isalpha() for c in w)]


def vocabulary(texts: list[str]) -> set[str]:
    return {w for t in texts for w in words(t)}
