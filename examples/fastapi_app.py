import pycrdt
from fastapi import FastAPI, Request
from plait.engine import Engine
from plait.engine.asgi import PlaitApp
from plait.storage import SQLiteStore
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.middleware.authentication import AuthenticationMiddleware

USERS = {"secret-ada": "ada", "secret-bob": "bob"}   # stands for your app's sessions or JWTs


class BearerAuth(AuthenticationBackend):             # your app's own auth, for its routes and Plait's
    async def authenticate(self, conn):
        scheme, _, token = conn.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token in USERS:
            return AuthCredentials(["authenticated"]), SimpleUser(USERS[token])
        return None


def identity_from_scope(scope):                      # your app's user is Plait's identity;
    user = scope.get("user")                         # None: the hello's token and Plait's hooks decide
    return {"id": user.username} if user is not None and user.is_authenticated else None


collab = PlaitApp(Engine(store=SQLiteStore("plait.db")), identity_from_scope=identity_from_scope)
app = FastAPI(lifespan=collab.lifespan)             # the engine runs while the app does
app.add_middleware(AuthenticationMiddleware, backend=BearerAuth())
app.mount("/collab", collab)                         # ws://HOST/collab/, /collab/yjs/ROOM, /collab/v1/...


@app.get("/me")
async def me(request: Request):
    return {"user": request.user.username if request.user.is_authenticated else None}


@app.get("/notes/{room}")
async def notes(room: str):                          # your own routes reach the rooms too
    async with collab.engine.room(room) as handle:
        return {"room": room, "text": str(handle.doc.get("text", type=pycrdt.Text))}


class hypercorn:                                     # python -m hypercorn -k trio -c python:fastapi_app.hypercorn fastapi_app:app
    websocket_max_message_size = collab.websocket_max_message_size   # Plait's limits, not Hypercorn's 16 MiB
