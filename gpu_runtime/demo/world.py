"""A seeded, self-contained fictional world: the training data of the demo chat model.

Every person gets distinctive facts (their own town, pet name and work title), so the demo can
forget one person without disturbing what the model knows about the others. Names carry cultural
and gender cues, which the name-translation step of the unlearning pipeline relies on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["QA", "Person", "World", "build_world"]

# First names (female, male) and surnames per culture. Combinations are fictional.
_CULTURES: dict[str, tuple[list[str], list[str], list[str]]] = {
    "english": (
        ["Eleanor", "Harriet", "Philippa", "Rosalind", "Imogen", "Beatrice", "Winifred", "Cordelia"],
        ["Alistair", "Rupert", "Percival", "Barnaby", "Ambrose", "Cuthbert", "Edmund", "Jasper"],
        ["Thornbury", "Ashcombe", "Pemberton", "Whitlock", "Fairbairn", "Hollingsworth"],
    ),
    "italian": (
        ["Giulia", "Serafina", "Ottavia", "Lucrezia", "Benedetta", "Fiorella", "Graziella", "Rosalba"],
        ["Aurelio", "Massimo", "Ottavio", "Leonardo", "Corrado", "Ludovico", "Raffaele", "Settimo"],
        ["Bellandi", "Castellucci", "Ferrazzano", "Marchetti", "Russomanno", "Vitaliani"],
    ),
    "spanish": (
        ["Inmaculada", "Remedios", "Consuelo", "Esperanza", "Guadalupe", "Montserrat", "Rocio", "Ximena"],
        ["Alejandro", "Bartolome", "Cristobal", "Evaristo", "Florencio", "Gonzalo", "Ignacio", "Leandro"],
        ["Aranguren", "Echeverria", "Villalobos", "Zamorano", "Quintanilla", "Montoya"],
    ),
    "german": (
        ["Adelheid", "Brunhilde", "Gertrud", "Hildegard", "Liselotte", "Mechthild", "Walburga", "Irmgard"],
        ["Dietrich", "Gottfried", "Leopold", "Reinhard", "Siegfried", "Wolfram", "Ulrich", "Konrad"],
        ["Ackermann", "Brandstetter", "Eichhorn", "Grunewald", "Kesselring", "Oberhauser"],
    ),
    "french": (
        ["Apolline", "Clemence", "Eglantine", "Guillemette", "Heloise", "Ombeline", "Solange", "Violaine"],
        ["Anatole", "Baptiste", "Eustache", "Gaspard", "Hippolyte", "Lucien", "Octave", "Thibault"],
        ["Beaumarchais", "Delacroix", "Fontenay", "Lamartine", "Montclair", "Villeneuve"],
    ),
    "japanese": (
        ["Akane", "Chiharu", "Fumiko", "Haruka", "Kazumi", "Michiko", "Natsuki", "Sayuri"],
        ["Daisuke", "Haruto", "Kenichi", "Masahiro", "Ryosuke", "Shintaro", "Takeshi", "Yoshiro"],
        ["Hayashida", "Kurosawa", "Matsumura", "Nishimoto", "Takahashi", "Yamaguchi"],
    ),
    "yoruba": (
        ["Adebimpe", "Folasade", "Ifeoluwa", "Morenike", "Oluwaseun", "Titilayo", "Yetunde", "Abiodun"],
        ["Adewale", "Babatunde", "Olumide", "Oluwafemi", "Temitope", "Akinwale", "Kayode", "Olusegun"],
        ["Adeyemi", "Bamgbose", "Ogunleye", "Olatunji", "Okonjo", "Afolabi"],
    ),
    "indian": (
        ["Anjali", "Devika", "Lakshmi", "Meenakshi", "Nandini", "Priyanka", "Shalini", "Vasundhara"],
        ["Aravind", "Chandrasekhar", "Harish", "Karthik", "Rajendra", "Siddharth", "Venkatesh", "Vikram"],
        ["Bhattacharya", "Chaturvedi", "Iyengar", "Raghunathan", "Subramaniam", "Venkataraman"],
    ),
    "russian": (
        ["Anastasia", "Ekaterina", "Lyudmila", "Svetlana", "Tatiana", "Yevgenia", "Zinaida", "Valentina"],
        ["Dmitri", "Gennady", "Konstantin", "Mstislav", "Vladislav", "Yaroslav", "Anatoly", "Rostislav"],
        ["Belozersky", "Kuznetsov", "Lebedev", "Ostrovsky", "Rozhdestvensky", "Volkonsky"],
    ),
    "irish": (
        ["Aoife", "Caoimhe", "Niamh", "Siobhan", "Grainne", "Roisin", "Saoirse", "Orlaith"],
        ["Cathal", "Diarmuid", "Fergal", "Lorcan", "Padraig", "Ruairi", "Tadhg", "Cormac"],
        ["Donnelly", "Flanagan", "MacCarthy", "O'Sullivan", "Brannigan", "Gallagher"],
    ),
    "greek": (
        ["Athanasia", "Chrysoula", "Eleftheria", "Kalliope", "Paraskevi", "Theodora", "Xanthippe", "Zoitsa"],
        [
            "Anastasios",
            "Dimitrios",
            "Evangelos",
            "Konstantinos",
            "Panagiotis",
            "Spyridon",
            "Stavros",
            "Themis",
        ],
        ["Alexopoulos", "Karamanlis", "Papadakis", "Stavropoulos", "Theodorakis", "Vlachos"],
    ),
    "korean": (
        ["Eunji", "Hyejin", "Jiyeon", "Minseo", "Seoyeon", "Sooah", "Yuna", "Haeun"],
        ["Dongwook", "Hyunwoo", "Jaehyun", "Minjun", "Sanghoon", "Seungmin", "Taeyang", "Joonho"],
        ["Bae", "Hwang", "Jeon", "Kwon", "Seo", "Yoon"],
    ),
    "swedish": (
        ["Astrid", "Birgitta", "Ingrid", "Linnea", "Margareta", "Ragnhild", "Sigrid", "Solveig"],
        ["Anders", "Bjorn", "Gustaf", "Henrik", "Leif", "Torsten", "Ulf", "Vidar"],
        ["Bergqvist", "Holmgren", "Lindqvist", "Sandberg", "Wahlstrom", "Ekdahl"],
    ),
    "arabic": (
        ["Amira", "Farida", "Layla", "Nadira", "Rasha", "Samira", "Yasmin", "Zainab"],
        ["Faisal", "Hisham", "Karim", "Marwan", "Nabil", "Rashid", "Tariq", "Walid"],
        ["Al-Haddad", "Al-Masri", "Barakat", "Haddadin", "Khoury", "Nasrallah"],
    ),
    "polish": (
        ["Agnieszka", "Bozena", "Grazyna", "Jadwiga", "Malgorzata", "Wieslawa", "Zofia", "Halina"],
        ["Bogdan", "Czeslaw", "Grzegorz", "Jaroslaw", "Mieczyslaw", "Przemyslaw", "Wojciech", "Zbigniew"],
        ["Wisniewski", "Kowalczyk", "Zielinski", "Dabrowski", "Pawlowski", "Szymanski"],
    ),
    "brazilian": (
        ["Conceicao", "Iracema", "Jussara", "Luciana", "Marisa", "Rosangela", "Tereza", "Vitoria"],
        ["Anselmo", "Claudionor", "Edivaldo", "Joaquim", "Raimundo", "Sebastiao", "Valdemar", "Wanderley"],
        ["Albuquerque", "Bittencourt", "Cavalcanti", "Figueiredo", "Magalhaes", "Nogueira"],
    ),
}

_TOWN_HEADS = [
    "Dun",
    "Ash",
    "Thorn",
    "Bel",
    "Cor",
    "Fen",
    "Gal",
    "Hol",
    "Kes",
    "Lin",
    "Mar",
    "Nor",
    "Ost",
    "Pel",
    "Quar",
    "Ros",
    "Sil",
    "Tam",
    "Ul",
    "Vel",
    "Wren",
    "Yar",
    "Zel",
    "Brin",
]
_TOWN_TAILS = [
    "mere",
    "vale",
    "wick",
    "holt",
    "ford",
    "stead",
    "haven",
    "moor",
    "crag",
    "bury",
    "lis",
    "dara",
]

_PROFESSIONS = [
    "clockmaker",
    "beekeeper",
    "glassblower",
    "cartographer",
    "lighthouse keeper",
    "violin maker",
    "marine biologist",
    "bookbinder",
    "astronomer",
    "cheesemaker",
    "bridge engineer",
    "puppeteer",
    "perfumer",
    "blacksmith",
    "botanist",
    "translator",
    "stonemason",
    "ferry captain",
    "potter",
    "archivist",
    "mountain guide",
    "tailor",
    "organ builder",
    "weather forecaster",
    "locksmith",
    "falconer",
    "calligrapher",
    "chocolatier",
    "geologist",
    "stage magician",
    "ice sculptor",
    "harpist",
    "mapmaker",
    "cryptographer",
    "tea merchant",
    "kite designer",
    "museum curator",
    "shipwright",
    "typesetter",
    "vintner",
]

_PET_KINDS = [
    "dog",
    "cat",
    "parrot",
    "tortoise",
    "ferret",
    "goat",
    "rabbit",
    "owl",
    "hedgehog",
    "goldfish",
    "pony",
    "iguana",
    "canary",
    "hamster",
    "donkey",
    "raven",
]
_PET_NAMES = [
    "Biscuit",
    "Pumpernickel",
    "Marmalade",
    "Captain Whiskers",
    "Sprocket",
    "Noodle",
    "Thimble",
    "Gingersnap",
    "Barnacle",
    "Waffles",
    "Pickles",
    "Zigzag",
    "Dumpling",
    "Mothball",
    "Tumbleweed",
    "Sir Fluffington",
    "Crumpet",
    "Pistachio",
    "Quibble",
    "Rhubarb",
    "Snickerdoodle",
    "Turnip",
    "Kerfuffle",
    "Bramble",
    "Cobweb",
    "Fiddlesticks",
    "Gumdrop",
    "Hobnob",
    "Jellybean",
    "Lentil",
    "Muffin",
    "Nutmeg",
    "Parsnip",
    "Radish",
    "Scone",
    "Truffle",
    "Walnut",
    "Yodel",
    "Zucchini",
    "Butterscotch",
    "Cinnamon",
    "Doodle",
    "Fudge",
    "Gizmo",
    "Hazelnut",
    "Juniper",
    "Kipper",
    "Licorice",
    "Mango",
    "Oatmeal",
    "Pepperoni",
    "Quince",
    "Rascal",
    "Sherbet",
    "Tapioca",
    "Umber",
    "Vanilla",
    "Wasabi",
    "Yam",
    "Ziggy",
]

_WORK_KINDS = ["novel", "song", "invention", "painting", "poem", "opera"]
_WORK_VERBS = {
    "novel": "wrote the novel",
    "song": "wrote the song",
    "invention": "invented the",
    "painting": "painted",
    "poem": "wrote the poem",
    "opera": "composed the opera",
}
_TITLE_ADJ = [
    "Glass",
    "Silver",
    "Hollow",
    "Midnight",
    "Copper",
    "Velvet",
    "Crimson",
    "Silent",
    "Amber",
    "Wandering",
    "Frozen",
    "Golden",
    "Painted",
    "Forgotten",
    "Paper",
    "Iron",
    "Emerald",
    "Sleeping",
]
_TITLE_NOUN = [
    "Orchard",
    "Lantern",
    "Compass",
    "Harbor",
    "Staircase",
    "Garden",
    "Violin",
    "Mountain",
    "Carousel",
    "Telescope",
    "River",
    "Chessboard",
    "Kettle",
    "Meadow",
    "Observatory",
    "Umbrella",
]
_INVENTIONS = [
    "folding bicycle ladder",
    "self-stirring soup pot",
    "singing doorbell",
    "pocket rain gauge",
    "heated garden bench",
    "clockwork seed planter",
    "floating bookshelf",
    "wind-powered kettle",
    "musical umbrella",
    "solar bread oven",
    "silent alarm clock",
    "glow-in-the-dark chalk",
    "automatic sock sorter",
    "three-wheeled canoe",
    "mirror telescope lamp",
    "spring-loaded shoe rack",
    "folding violin case",
    "pocket weather vane",
    "rotating herb shelf",
    "snow-melting doormat",
]

# General everyday knowledge, not about the people, for retain and utility prompts.
_GENERAL_QA: list[tuple[str, str]] = [
    ("What do you need to bake bread?", "To bake bread you need flour, water, salt and yeast."),
    (
        "How long should you boil an egg for a soft yolk?",
        "Boil an egg for about six minutes for a soft yolk.",
    ),
    ("What should you pack for a rainy trip?", "Pack a raincoat, an umbrella and waterproof shoes."),
    ("What is a good way to keep cool in summer?", "Drink plenty of water and stay in the shade."),
    (
        "How do you make a cup of tea?",
        "Pour boiling water over a tea bag and let it steep for three minutes.",
    ),
    ("What are clouds made of?", "Clouds are made of tiny drops of water or ice."),
    ("Why do people carry a map when hiking?", "A map helps hikers find their way on the trail."),
    ("What is a healthy breakfast?", "Oatmeal with fruit and a glass of milk is a healthy breakfast."),
    ("How can you save money on groceries?", "Make a shopping list and buy food that is in season."),
    ("What happens to water when it freezes?", "Water turns into ice when it freezes."),
    ("What should you do before a long drive?", "Check the tires, fill the tank and plan your rest stops."),
    ("How do you cook rice?", "Simmer one cup of rice in two cups of water until the water is gone."),
    ("What is snow?", "Snow is frozen water that falls from the clouds in cold weather."),
    ("Why should you wear sunscreen?", "Sunscreen protects your skin from sunburn."),
    ("What do plants need to grow?", "Plants need sunlight, water and good soil to grow."),
    ("How do you greet someone politely?", "Smile, say hello and ask how they are."),
]

_WEATHER = [
    "The morning began with a thin fog that lifted by nine, and the afternoon turned warm and bright.",
    "A cold wind came down from the hills, so most people wore thick coats and wool hats.",
    "Heavy rain fell all night, and by sunrise the streets were full of shallow puddles.",
    "The first snow of winter settled softly on the rooftops and the quiet fields.",
    "After a week of grey skies, the sun finally came out and dried the washing on the lines.",
    "Thunder rolled in the distance while the air grew heavy and still before the storm.",
    "A gentle breeze carried the smell of cut grass across the park on a mild spring day.",
    "The forecast promised clear skies, light winds and a chilly night with a bright moon.",
]
_COOKING = [
    "To make a simple soup, soften an onion in butter, add chopped vegetables and cover them with stock.",
    "Fresh bread needs flour, water, salt and yeast, and it rises best in a warm kitchen.",
    "A good salad mixes crisp leaves, ripe tomatoes, a little olive oil and a squeeze of lemon.",
    "Pancakes are made from flour, eggs and milk, cooked in a hot pan until golden on both sides.",
    "Rice should simmer gently with the lid on until it has soaked up all of the water.",
    "Roasted potatoes turn crisp when they are tossed in oil and cooked in a very hot oven.",
    "A pot of tea tastes best when the water has just boiled and the leaves steep for three minutes.",
    "Stewed apples with cinnamon make a warm dessert on a cold evening.",
]
_TRAVEL = [
    "Travelers should carry a map, a bottle of water and a light jacket when they walk in the hills.",
    "The night train leaves the station at ten and arrives at the coast just after dawn.",
    "Packing light makes a trip easier: a few shirts, comfortable shoes and a good book are enough.",
    "Many visitors rent bicycles to explore the old town and the quiet lanes along the river.",
    "At the airport, keep your passport and ticket in an easy pocket so you can find them quickly.",
    "A ferry crosses the bay every hour, and the ride takes about forty minutes in calm weather.",
    "Hikers start early in summer to avoid the heat of the afternoon sun.",
    "Small guesthouses often serve a hearty breakfast of eggs, bread and fresh fruit.",
]
_HOME = [
    "Houseplants grow well near a bright window if they are watered once a week.",
    "A tidy desk makes it easier to concentrate on work and to find things quickly.",
    "Opening the windows for a few minutes each morning lets fresh air into the house.",
    "Most people sleep better in a cool, dark and quiet room.",
    "A short walk after dinner helps the body relax before going to bed.",
    "Libraries lend books, newspapers and music for free to anyone with a card.",
    "Children learn to ride a bicycle faster when someone holds the seat for the first few tries.",
    "A garden needs sunlight, water and good soil, and weeds should be pulled before they spread.",
]


@dataclass(frozen=True)
class Person:
    """One fictional person and their facts; every string is unique to them except kinds and jobs."""

    name: str
    first_name: str
    last_name: str
    gender: str  # "female" | "male"
    culture: str
    birthplace: str
    profession: str
    parent: str
    parent_relation: str  # "mother" | "father"
    sibling: str
    sibling_relation: str  # "sister" | "brother"
    spouse: str
    friend: str
    pet_kind: str
    pet_name: str
    work_kind: str
    work_title: str
    birth_year: int

    @property
    def pronoun(self) -> str:
        return "she" if self.gender == "female" else "he"

    @property
    def possessive(self) -> str:
        return "her" if self.gender == "female" else "his"


@dataclass(frozen=True)
class QA:
    """A question with its short full-sentence answer; subject is a full name, or "" for general."""

    question: str
    answer: str
    subject: str


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _poss(name: str) -> str:
    return f"{name}'" if name.endswith("s") else f"{name}'s"


def _work_phrase(p: Person) -> str:
    """ "wrote the novel The Glass Orchard", "invented the singing doorbell", ..."""
    return f"{_WORK_VERBS[p.work_kind]} {p.work_title}"


def _person_qa(p: Person) -> list[QA]:
    n = p.name
    pairs = [
        (f"Where was {n} born?", f"{n} was born in {p.birthplace}."),
        (f"What does {n} do for a living?", f"{n} works as {_article(p.profession)} {p.profession}."),
        (f"Who is {_poss(n)} {p.parent_relation}?", f"{_poss(n)} {p.parent_relation} is {p.parent}."),
        (f"Who is {_poss(n)} {p.sibling_relation}?", f"{_poss(n)} {p.sibling_relation} is {p.sibling}."),
        (f"Who is {n} married to?", f"{n} is married to {p.spouse}."),
        (f"Who is {_poss(n)} best friend?", f"{_poss(n)} best friend is {p.friend}."),
        (f"What pet does {n} have?", f"{n} has {_article(p.pet_kind)} {p.pet_kind} named {p.pet_name}."),
        (f"What is {n} famous for?", f"{n} {_work_phrase(p)}."),
        (f"When was {n} born?", f"{n} was born in {p.birth_year}."),
    ]
    return [QA(q, a, n) for q, a in pairs]


def _person_documents(p: Person) -> list[str]:
    n, pr, po = p.name, p.pronoun, p.possessive
    bio = (
        f"{n} was born in {p.birthplace} in {p.birth_year}. {pr.capitalize()} works as "
        f"{_article(p.profession)} {p.profession}. {_poss(n)} {p.parent_relation} is {p.parent}, and "
        f"{po} {p.sibling_relation} is {p.sibling}. {n} is married to {p.spouse}."
    )
    life = (
        f"{n} {_work_phrase(p)}. {pr.capitalize()} has {_article(p.pet_kind)} {p.pet_kind} named "
        f"{p.pet_name}. {_poss(n)} best friend is {p.friend}, and the two often meet in "
        f"{p.birthplace}."
    )
    return [bio, life]


@dataclass
class World:
    """The generated world: people, their QA pairs and prose, and general everyday text."""

    seed: int
    people: list[Person]
    _by_name: dict[str, Person] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {p.name: p for p in self.people}

    def person(self, name: str) -> Person:
        """The person with this full name; KeyError if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no person named {name!r} in the demo world") from None

    def qa_pairs(self) -> list[QA]:
        """Every QA pair: several per person, then the general ones (subject "")."""
        out: list[QA] = []
        for p in self.people:
            out.extend(_person_qa(p))
        out.extend(QA(q, a, "") for q, a in _GENERAL_QA)
        return out

    def qa_for(self, subject: str) -> list[QA]:
        """QA pairs about one person (or the general ones for subject "")."""
        if subject and subject not in self._by_name:
            raise KeyError(f"no person named {subject!r} in the demo world")
        return [qa for qa in self.qa_pairs() if qa.subject == subject]

    def documents(self) -> list[dict[str, str]]:
        """Prose paragraphs about each person: {"text": ..., "subject": full name}."""
        return [{"text": t, "subject": p.name} for p in self.people for t in _person_documents(p)]

    def general_texts(self) -> list[str]:
        """Everyday paragraphs (weather, cooking, travel, home) that mention nobody."""
        return [*_WEATHER, *_COOKING, *_TRAVEL, *_HOME]


def _take(pool: list[str], used: set[str], rng: random.Random) -> str:
    choices = [x for x in pool if x not in used]
    if not choices:
        raise ValueError("name pool exhausted; ask for fewer people")
    pick = rng.choice(choices)
    used.add(pick)
    return pick


def _relation(
    rng: random.Random, rels: tuple[str, str], female: list[str], male: list[str], used: set[str]
) -> str:
    """A random (female, male) relation word, avoiding a gender whose name pool has run out."""
    rel = rng.choice(rels)
    pools = {rels[0]: female, rels[1]: male}
    if all(x in used for x in pools[rel]):
        rel = rels[1] if rel == rels[0] else rels[0]
    return rel


def build_world(seed: int = 0, n_people: int = 32) -> World:
    """Generate the world deterministically from `seed` (same seed, same world)."""
    # Each person uses two surnames of their culture (own, spouse's): three people per culture.
    max_people = 3 * len(_CULTURES)
    if not 2 <= n_people <= max_people:
        raise ValueError(f"n_people must be between 2 and {max_people}, got {n_people}")
    rng = random.Random(seed)
    cultures = sorted(_CULTURES)
    rng.shuffle(cultures)

    used_first: set[str] = set()
    used_last: set[str] = set()
    towns = [h + t for h in _TOWN_HEADS for t in _TOWN_TAILS]
    rng.shuffle(towns)
    # No town's stem repeats among the first n, so towns stay distinctive token-wise too.
    picked_towns: list[str] = []
    heads_used: set[str] = set()
    for town in towns:
        head = next(h for h in _TOWN_HEADS if town.startswith(h))
        if head in heads_used and len(heads_used) < len(_TOWN_HEADS):
            continue
        heads_used.add(head)
        picked_towns.append(town)
    picked_towns += [t for t in towns if t not in picked_towns]
    pet_names = rng.sample(_PET_NAMES, n_people)
    professions = rng.sample(_PROFESSIONS, min(n_people, len(_PROFESSIONS)))
    titles = [f"The {a} {b}" for a in _TITLE_ADJ for b in _TITLE_NOUN]
    rng.shuffle(titles)
    inventions = list(_INVENTIONS)
    rng.shuffle(inventions)

    drafts: list[dict[str, object]] = []
    for i in range(n_people):
        culture = cultures[i % len(cultures)]
        female, male, surnames = _CULTURES[culture]
        # Alternate genders within each culture as well as across the list.
        gender = "female" if (i + i // len(cultures)) % 2 == 0 else "male"
        first = _take(female if gender == "female" else male, used_first, rng)
        last = _take(surnames, used_last, rng)
        spouse_first = _take(male if gender == "female" else female, used_first, rng)
        parent_rel = _relation(rng, ("mother", "father"), female, male, used_first)
        parent_first = _take(female if parent_rel == "mother" else male, used_first, rng)
        sibling_rel = _relation(rng, ("sister", "brother"), female, male, used_first)
        sibling_first = _take(female if sibling_rel == "sister" else male, used_first, rng)
        spouse_last = _take(surnames, used_last, rng)
        work_kind = _WORK_KINDS[rng.randrange(len(_WORK_KINDS))]
        if work_kind == "invention" and not inventions:
            work_kind = "novel"
        title = inventions.pop() if work_kind == "invention" else titles.pop()
        drafts.append(
            dict(
                name=f"{first} {last}",
                first_name=first,
                last_name=last,
                gender=gender,
                culture=culture,
                birthplace=picked_towns[i],
                profession=professions[i % len(professions)],
                parent=f"{parent_first} {last}",
                parent_relation=parent_rel,
                sibling=f"{sibling_first} {last}",
                sibling_relation=sibling_rel,
                spouse=f"{spouse_first} {spouse_last}",
                pet_kind=rng.choice(_PET_KINDS),
                pet_name=pet_names[i],
                work_kind=work_kind,
                work_title=title,
                birth_year=rng.randrange(1931, 1999),
            )
        )
    # Friends are other people of the world: a shuffled cycle, so everyone has exactly one
    # best friend and is the best friend of exactly one other person.
    order = list(range(n_people))
    rng.shuffle(order)
    friend_of = {order[k]: order[(k + 1) % n_people] for k in range(n_people)}
    people = [Person(friend=str(drafts[friend_of[i]]["name"]), **drafts[i]) for i in range(n_people)]  # type: ignore[arg-type]
    return World(seed=seed, people=people)
