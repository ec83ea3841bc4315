//! `kiosk-gateway room create|delete|list` for technicians: output formatting
//! for the Daily client, so `main.rs` stays argument parsing only.

use serde::Serialize;

use super::{DailyClient, DailyError, Room, RoomDeletion, RoomName, unix_now};

/// One technician action on Daily rooms.
#[derive(Clone, Debug)]
pub enum RoomCommand {
    /// Create a room with the session room properties; a name is generated
    /// from the kiosk id when none is given.
    Create {
        /// The room's name, if chosen.
        name: Option<RoomName>,
        /// The kiosk the generated name is for.
        kiosk_id: String,
    },
    /// Delete a room (a room already gone is not an error).
    Delete {
        /// The room.
        name: RoomName,
    },
    /// List the account's rooms.
    List,
}

#[derive(Serialize)]
struct DeleteOutput<'a> {
    name: &'a RoomName,
    result: RoomDeletion,
}

/// Runs the command and returns what to print (JSON when `json`, one
/// line per room otherwise).
pub async fn run_room_command(
    client: &DailyClient,
    command: RoomCommand,
    json: bool,
) -> Result<String, DailyError> {
    match command {
        RoomCommand::Create { name, kiosk_id } => {
            let name = name.unwrap_or_else(|| RoomName::for_kiosk(&kiosk_id));
            let request = client.room_settings().create_request(name, unix_now());
            let room = client.create_room(&request).await?;
            Ok(if json {
                to_json(&room)
            } else {
                room_line(&room)
            })
        }
        RoomCommand::Delete { name } => {
            let result = client.delete_room(&name).await?;
            Ok(if json {
                to_json(&DeleteOutput {
                    name: &name,
                    result,
                })
            } else {
                match result {
                    RoomDeletion::Deleted => format!("deleted {name}"),
                    RoomDeletion::AlreadyGone => format!("{name} was already gone"),
                }
            })
        }
        RoomCommand::List => {
            let rooms = client.list_rooms().await?;
            Ok(if json {
                to_json(&rooms)
            } else {
                rooms.iter().map(room_line).collect::<Vec<_>>().join("\n")
            })
        }
    }
}

fn room_line(room: &Room) -> String {
    let exp = room
        .config
        .exp
        .map_or_else(|| "no expiry".to_owned(), |e| format!("exp {e}"));
    format!("{}\t{}\t{exp}", room.name, room.url)
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("plain data serialises")
}
