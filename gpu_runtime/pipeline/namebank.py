"""Small banks of generic names that anchor translations are drawn from (no downloads).

Lists are deliberately common, culturally mixed English-language names so that a translation
reads as plausible running text; ``anchors.generic_translations`` picks the most similar-looking.
"""

from __future__ import annotations

from functools import cache

MALE_FIRST = (
    "Aaron Adam Adrian Alan Albert Alec Alfred Andrew Anthony Arthur Barry Ben Bernard Bill Brian Bruce "
    "Carl Charles Chris Colin Daniel David Dennis Derek Donald Douglas Edgar Edward Edwin Eric Ernest "
    "Frank Fred Gary George Gerald Gordon Graham Harold Harris Harvey Henry Herbert Howard Hugh Ian "
    "Jack James Jason Jeffrey Jerry John Jonah Joseph Keith Kenneth Kevin Larry Leonard Lewis Louis "
    "Mark Martin Matthew Michael Neil Nigel Norman Oliver Oscar Owen Patrick Paul Peter Philip Ralph "
    "Raymond Richard Robert Roger Ronald Rory Roy Russell Samuel Simon Stanley Stephen Stuart Terry "
    "Thomas Timothy Tom Victor Walter Warren Wesley William"
).split()

FEMALE_FIRST = (
    "Abigail Agnes Alice Alison Amanda Amelia Andrea Angela Anna Annie Barbara Beatrice Belinda Bella "
    "Betty Brenda Carol Caroline Catherine Charlotte Clara Claire Daisy Deborah Diana Donna Doris Eileen "
    "Elaine Eleanor Ellen Emily Emma Fiona Florence Frances Gemma Georgia Grace Hannah Harriet Hazel "
    "Heather Helen Henrietta Irene Isabel Jane Janet Jennifer Jessica Joan Judith Julia Karen Kate "
    "Laura Leah Linda Lucy Lydia Margaret Maria Marian Martha Mary Megan Melissa Miriam Molly Monica "
    "Nancy Natalie Nina Nora Olivia Pamela Patricia Pauline Penelope Rachel Rebecca Rita Rosa Rose "
    "Ruth Sally Sandra Sarah Sophie Susan Teresa Valerie Vera Victoria Wendy Yvonne"
).split()

SURNAMES = (
    "Adams Allen Baker Barker Bennett Brooks Brown Butler Carter Chapman Clarke Cole Collins Cooper "
    "Cox Davies Dawson Dixon Edwards Ellis Evans Fisher Fletcher Ford Foster Fox Gibson Graham Grant "
    "Gray Green Hall Harper Harris Hayes Hill Holmes Hopkins Howard Hughes Hunt Jackson James Jenkins "
    "Johnson Jones Kelly Kennedy King Knight Lambert Lawrence Lee Lewis Lloyd Marsh Marshall Martin "
    "Mason Matthews Miller Mills Mitchell Moore Morgan Morris Murphy Murray Nelson Newman Owen Palmer "
    "Parker Parsons Pearson Perry Porter Powell Price Reed Reynolds Richards Roberts Robinson Rogers "
    "Russell Saunders Scott Shaw Simpson Smith Spencer Stevens Stone Taylor Thomas Thompson Turner "
    "Walker Ward Watson Webb Wells West White Wilkinson Williams Wilson Wood Wright Young"
).split()

PLACES = (
    "Ashford Ashton Bexley Bradford Bramley Brighton Burnley Carlton Chester Clifton Crawley Dalton "
    "Denton Dorchester Easton Elmwood Fairfield Farnham Fulton Glenwood Greenville Hadley Halton "
    "Hampton Harlow Hartford Hayward Hillsdale Holbrook Kingston Lakewood Langley Lincoln Marlow "
    "Melford Middleton Milford Milton Newbury Newport Northfield Norwood Oakdale Oakley Preston "
    "Redfield Richmond Riverton Rockford Salem Sheffield Shelby Springfield Stanton Stratford Sutton "
    "Thornbury Trenton Upton Wakefield Waverly Westbury Weston Whitby Winchester Woodbridge Yardley"
).split()

ORGANIZATIONS = (
    "Allied Atlas Beacon Central Civic Crescent Crown Eagle Empire General Global Harbor Heritage "
    "Horizon Liberty Meridian National Northern Pacific Phoenix Pinnacle Premier Regal Summit Union "
    "United Vanguard Western"
).split()

FEMALE_ENDINGS = ("a", "ia", "ie", "ine", "elle", "ette", "een", "lyn", "ah", "one", "ette", "ice")


#: Words a value translation never replaces (they carry the phrase's grammar, not the fact).
FUNCTION_WORDS = frozenset(
    """a an the of and or but nor in on at to for with from by as into onto upon about over under
    after before during since until than then so if is are was were be been being am has have had do
    does did will would shall should can could may might must not no yes it its he she they we you i
    his her their our your my him them us me this that these those there here who whom whose which what
    when where why how all any both each every some such very also just only own same other another
    named called known works worked working lives lived living born died married has had got gets get
    one two three four five six seven eight nine ten first second third last per via
    wrote written made built found founded won sang sung drew drawn became began begun taught led ran
    gave given took taken wore grew grown held kept left met paid said sold sent spent stood told
    thought bought brought caught fought""".split()
)


@cache
def common_words() -> tuple[str, ...]:
    """Plain English words for translating attribute values: Faker's en_US word list (offline,
    curated: a frequency list would bring profanity and slurs along)."""
    from faker.providers.lorem.en_US import Provider

    words = {w.lower() for w in Provider.word_list}
    return tuple(sorted({w for w in words if w.isascii() and w.isalpha() and len(w) >= 3} - FUNCTION_WORDS))
